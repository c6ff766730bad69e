//! The Kubernetes client: the in-cluster config (the service account the DaemonSet runs as), or
//! a kubeconfig for runs outside a cluster.

use std::path::{Path, PathBuf};

use kube::config::{Config, KubeConfigOptions, Kubeconfig};

/// Why no client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `--kubeconfig PATH` could not be read or parsed.
    #[error("cannot read the kubeconfig {path}: {source}")]
    KubeconfigRead {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The kubeconfig was read but names no usable cluster, context or user.
    #[error("kubeconfig {path} is not usable: {source}")]
    KubeconfigInvalid {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No `--kubeconfig` / `KUBECONFIG`, and the in-cluster service account is not there.
    #[error(
        "no in-cluster Kubernetes config: {source}. In a pod, mount the service account token \
         (automountServiceAccountToken: true, as overlays/dra does); outside a cluster, pass \
         --kubeconfig PATH or set KUBECONFIG"
    )]
    InCluster {
        #[source]
        source: kube::config::InClusterError,
    },
    /// The config was read but the client could not be built from it (TLS material, proxy).
    #[error("cannot build the Kubernetes client for {origin}: {source}")]
    Build {
        origin: String,
        #[source]
        source: kube::Error,
    },
}

/// A client from `kubeconfig` when given (`--kubeconfig`, or `KUBECONFIG` through clap), else
/// from the in-cluster service account (SPEC §8: the default is the in-cluster config; a
/// developer's `~/.kube/config` is never picked up by surprise).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    let (config, origin) = match kubeconfig {
        Some(path) => {
            let file =
                Kubeconfig::read_from(path).map_err(|source| ClientError::KubeconfigRead {
                    path: path.to_path_buf(),
                    source,
                })?;
            let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|source| ClientError::KubeconfigInvalid {
                    path: path.to_path_buf(),
                    source,
                })?;
            (config, path.display().to_string())
        }
        None => {
            let config = Config::incluster().map_err(|source| ClientError::InCluster { source })?;
            (config, "the in-cluster config".to_string())
        }
    };
    tracing::debug!(cluster = %config.cluster_url, %origin, "Kubernetes client");
    kube::Client::try_from(config).map_err(|source| ClientError::Build { origin, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_kubeconfig_is_named() {
        let Err(err) = client(Some(Path::new("/nonexistent/kubeconfig"))).await else {
            panic!("a client from a missing file")
        };
        let text = err.to_string();
        assert!(text.contains("/nonexistent/kubeconfig"), "{text}");
    }

    #[tokio::test]
    async fn a_plain_http_kubeconfig_gives_a_client() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters: [{name: t, cluster: {server: \"http://127.0.0.1:1\"}}]\n\
             users: [{name: t, user: {}}]\ncontexts: [{name: t, context: {cluster: t, user: t}}]\n\
             current-context: t\n",
        )
        .unwrap();
        client(Some(&path)).await.unwrap();
        std::fs::write(&path, "clusters: [").unwrap();
        let Err(err) = client(Some(&path)).await else {
            panic!("a client from a broken file")
        };
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
    }
}
