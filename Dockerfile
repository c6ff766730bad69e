# syntax=docker/dockerfile:1
#
# gpu-agent container image.
#   docker build -t gpu-agent:0.1.0 .
#
# Builder: the official Rust image, pinned to a toolchain that builds Cargo.lock (tests/deploy.rs
# checks it against the newest rust-version in the lock) on Debian 12, the same Debian as the
# runtime image so the binary's glibc requirement is met there.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# The build command is .ci/build-release, which .ci/run runs too (tests/deploy.rs checks both).
# Cache mounts keep the crate registry and compiled dependencies between builds; the binary is
# copied out in the same step because the target directory is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,sharing=locked \
    .ci/build-release \
    && install -D -m 0755 target/release/gpu-agent /out/gpu-agent \
    && ln -s gpu-agent /out/nvidia-device-plugin

# Runtime: distroless with glibc and libgcc, no shell. Not a static musl binary: NVML
# (libnvidia-ml.so.1) is loaded with dlopen at start, from the driver the NVIDIA container
# runtime mounts into the container; a static binary cannot dlopen.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="gpu-agent" \
      org.opencontainers.image.description="Kubernetes GPU device plugin and node agent: exclusive, time-sliced, MIG and vGPU resources, health, metrics" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# /usr/local/bin/nvidia-device-plugin links to gpu-agent: run under that name (NVIDIA's image
# command, which its helm chart's config-manager sidecar finds by name to send SIGHUP), the
# binary is `gpu-agent run` with NVIDIA's flag spellings. A directory COPY keeps the link a link.
COPY --from=builder /out/ /usr/local/bin/
# Ask the NVIDIA container runtime for every GPU and only the "utility" driver libraries
# (libnvidia-ml, nvidia-smi): the agent enumerates and monitors GPUs, it runs no CUDA.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=utility
# uid 65532 by default. The DaemonSet runs it as uid 0 with every capability dropped, because the
# kubelet's device-plugin and pod-resources sockets belong to root (daemonset/base/daemonset.yaml).
USER 65532:65532
EXPOSE 9400
ENTRYPOINT ["/usr/local/bin/gpu-agent"]
CMD ["run"]
