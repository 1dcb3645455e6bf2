//! Worker threads as shards: each thread runs its own single-threaded event loop, and a
//! connection stays on the thread it was handed to for its whole life, together with the pools
//! of upstream connections it uses.
//!
//! Why not tokio's work-stealing runtime: it moves tasks between threads, so one proxied request
//! crosses threads several times, and every crossing is a wake-up of another thread. Why not one
//! thread for all: it leaves the other cores idle while work waits for the one. Shards keep the
//! single thread's cheap hand-offs and still use every core, as nginx's workers and Envoy's do.
//!
//! Per thread: the HTTP/2 connections to each remote endpoint and the keep-alive pool to the
//! app. Shared: the outbound HTTP/1.1 pool (hyper-util's, for remotes without h2 and for
//! upgrades), where a request may use a connection another thread drives: correct, only slower.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// How many shards this process runs; [`ShardLocal`] makes one value per shard.
static COUNT: AtomicUsize = AtomicUsize::new(1);

/// The shard the calling thread is (0: the main runtime's thread, and any thread not a shard).
pub fn current() -> usize {
    CURRENT.with(Cell::get)
}

/// The number of shards for `--worker-threads N`: N, or one per core the process may use when
/// N is 0 (the CPU affinity and the cgroup's CPU quota count, as `std` reads them).
pub fn count_for(worker_threads: usize) -> usize {
    match worker_threads {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    }
}

/// The shards of the process: the calling runtime is shard 0, the others run on threads of
/// their own. They live as long as the process: connections still draining at shutdown are
/// tracked by the kit's task tracker, which the process waits for before it exits.
pub struct Shards {
    /// Shards 1.. (shard 0 is the runtime that started them).
    others: Vec<Handle>,
    /// Connections open on each shard, to hand a new one to the least loaded.
    open: Arc<[AtomicUsize]>,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("count", &self.open.len())
            .finish()
    }
}

impl Shards {
    /// Starts `count - 1` threads beside the calling runtime, each with a current-thread tokio
    /// runtime, and records `count` for [`ShardLocal`].
    pub fn start(count: usize) -> std::io::Result<Self> {
        let count = count.max(1);
        let mut others = Vec::with_capacity(count - 1);
        for index in 1..count {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                // Short enough for the kernel's 15-byte thread names (`top -H`, /proc).
                .name(format!("ambassador-w{index}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(index));
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => {
                            let _ = tx.send(Ok(runtime.handle().clone()));
                            runtime.block_on(std::future::pending::<()>());
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                })?;
            let handle = rx.recv().map_err(|_| {
                std::io::Error::other(format!("worker thread {index} ended while starting"))
            })??;
            others.push(handle);
        }
        COUNT.store(count, Ordering::Relaxed);
        Ok(Self {
            others,
            open: (0..count).map(|_| AtomicUsize::new(0)).collect(),
        })
    }

    /// How many shards there are.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Serves an accepted connection on the shard with the fewest open connections, tracked by
    /// `tracker` (so that the drain waits for it).
    pub fn spawn<F, Fut>(&self, tracker: &TaskTracker, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let index = self.least_loaded();
        let open = OpenConnection::new(self.open.clone(), index);
        let Some(handle) = index.checked_sub(1).and_then(|i| self.others.get(i)) else {
            tracker.spawn(async move {
                let _open = open;
                serve(stream).await;
            });
            return;
        };
        // A tokio stream belongs to the runtime that registered it: hand over the socket itself.
        let socket = match stream.into_std() {
            Ok(socket) => socket,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand a connection to worker thread {index}; closed it");
                return;
            }
        };
        tracker.spawn_on(
            async move {
                let _open = open;
                match TcpStream::from_std(socket) {
                    Ok(stream) => serve(stream).await,
                    Err(e) => tracing::warn!(
                        error = %e,
                        "cannot take a connection on worker thread {index}; closed it"
                    ),
                }
            },
            handle,
        );
    }

    fn least_loaded(&self) -> usize {
        let mut best = 0;
        let mut fewest = usize::MAX;
        for (index, open) in self.open.iter().enumerate() {
            let n = open.load(Ordering::Relaxed);
            if n < fewest {
                best = index;
                fewest = n;
            }
        }
        best
    }
}

/// Counts a connection as open on its shard until dropped.
struct OpenConnection {
    open: Arc<[AtomicUsize]>,
    index: usize,
}

impl OpenConnection {
    fn new(open: Arc<[AtomicUsize]>, index: usize) -> Self {
        open[index].fetch_add(1, Ordering::Relaxed);
        Self { open, index }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

/// One value per shard, for state whose I/O belongs to one thread (pools of connections): each
/// shard uses its own, so a request never waits on another thread's connection.
pub struct ShardLocal<T> {
    values: Box<[T]>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for ShardLocal<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.values.iter()).finish()
    }
}

impl<T> ShardLocal<T> {
    /// One value from `make` for each shard of the process. Make it after [`Shards::start`]:
    /// before, the process counts one shard and every thread shares that one value (correct,
    /// but each request may then wait on another thread's connection). `serve` starts the
    /// shards first; the pools are made when their listeners bind or, for remotes, on first use.
    pub fn new(mut make: impl FnMut() -> T) -> Self {
        let count = COUNT.load(Ordering::Relaxed).max(1);
        Self {
            values: (0..count).map(|_| make()).collect(),
        }
    }

    /// The calling shard's value.
    pub fn get(&self) -> &T {
        // The modulo keeps a thread outside the shards (or a value made before they started)
        // on a valid one.
        &self.values[current() % self.values.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_one_per_core_and_n_means_n() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert_eq!(count_for(0), cores);
        assert_eq!(count_for(3), 3);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connections_spread_over_the_shards_and_work_on_their_thread() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let shards = Shards::start(2).unwrap();
        let tracker = TaskTracker::new();
        let done = tokio_util::sync::CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            let (stream, _) = listener.accept().await.unwrap();
            let done = done.clone();
            shards.spawn(&tracker, stream, move |mut stream| async move {
                // The stream works on the shard it was handed to: it says which one that is.
                let shard = u8::try_from(current()).unwrap();
                stream.write_all(&[shard]).await.unwrap();
                // Held open until the end, so that it counts as open when the next one comes.
                done.cancelled().await;
            });
        }
        let mut on = Vec::new();
        for client in &mut clients {
            on.push(client.read_u8().await.unwrap());
        }
        // Each went to the shard with fewer open connections: in turn, as they stay open.
        assert_eq!(on, vec![0, 1, 0, 1]);
        done.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
