//! The mutating admission webhook (`gpu-agent webhook`): pods say what they are and how much GPU
//! memory they need (annotations `gpu.ml.io/workload-type`, `gpu.ml.io/gpu-memory`) and get the
//! resource the strategy rules pick from the cluster's catalog added to their first container.
//!
//! [`admission`] and [`patch`] are pure (AdmissionReview JSON in, AdmissionReview JSON out);
//! [`reload`] keeps file-backed inputs (catalog, thresholds, certificate) current; [`tls`] reads
//! the certificate; [`server`] is the HTTPS shell.

pub mod admission;
pub mod patch;
pub mod reload;
pub mod server;
pub mod tls;
