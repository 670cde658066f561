//! The operations endpoints (health, readiness, metrics) on a thread and runtime of their own,
//! so a flood of API requests or a busy pipeline cannot queue a probe behind its work: on the
//! shared runtime, `/healthz` took over 100 ms under a 10× flood (docs/benchmarks.md).

use std::io;
use std::thread::JoinHandle;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A running operations server; [`OperationsServer::stop`] ends it.
pub struct OperationsServer {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<io::Result<()>>,
}

/// Serves `router` on `listener` from a new thread with a single-threaded runtime.
pub fn spawn(listener: TcpListener, router: Router) -> io::Result<OperationsServer> {
    // A tokio listener belongs to the runtime it was made on; it moves as a std one.
    let listener = listener.into_std()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("operations".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener)?;
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
            })
        })?;
    Ok(OperationsServer { stop, thread })
}

impl OperationsServer {
    /// Stops accepting, lets requests in flight finish and waits for the thread to end.
    pub async fn stop(self) -> io::Result<()> {
        let _ = self.stop.send(());
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(io::Error::other)?
            .map_err(|_| io::Error::other("the operations thread panicked"))?
    }
}
