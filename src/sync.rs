//! Small helpers around `tokio::sync::watch`.

use tokio::sync::watch;

/// Wait until `pred` holds for the channel's value (or the sender is gone). Unlike
/// `watch::Receiver::wait_for`, the returned future holds no borrow, so it is `Send` in `select!`.
pub async fn until<T>(rx: &mut watch::Receiver<T>, pred: impl FnMut(&T) -> bool) {
    let _ = rx.wait_for(pred).await;
}

/// Wait until a shutdown flag turns true.
pub async fn until_true(rx: &mut watch::Receiver<bool>) {
    until(rx, |v| *v).await
}
