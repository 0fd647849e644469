//! A Kubernetes CRI client (`runtime.v1`), as the kubelet talks to containerd: the
//! generated types and clients, and a connection over containerd's unix socket.

#![allow(missing_docs, clippy::all)]

/// The CRI `runtime.v1` API.
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

use std::path::Path;

/// The runtime and image services of the CRI server on `socket`.
pub async fn connect(
    socket: &Path,
) -> (
    v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    v1::image_service_client::ImageServiceClient<tonic::transport::Channel>,
) {
    let path = socket.to_path_buf();
    // The URI is required by the API but unused: every connection goes to `path`.
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap_or_else(|e| panic!("connecting to CRI on {}: {e}", socket.display()));
    (
        v1::runtime_service_client::RuntimeServiceClient::new(channel.clone()),
        v1::image_service_client::ImageServiceClient::new(channel),
    )
}
