//! A small pool of ONNX Runtime sessions over one model file.
//!
//! Since `ort` 2.0.0-rc.10, `Session::run` takes `&mut self`, so one session serves one
//! caller at a time. The review page, the CLI and the sync loop may all want a model at
//! once; a pool of a few sessions lets them run side by side instead of queueing behind a
//! single mutex. Sessions are created lazily up to `max_sessions`; a caller that finds
//! all of them busy waits for the first one returned.

use ort::session::{builder::GraphOptimizationLevel, Session};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

/// How sessions are built.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    /// Threads inside one operator (ONNX Runtime's intra-op pool) per session.
    pub intra_threads: usize,
    /// Most sessions kept for one model file.
    pub max_sessions: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            intra_threads: default_threads(),
            max_sessions: 2,
        }
    }
}

/// Every logical CPU, at most 4. Measured with `cargo bench --bench analyze` on 2 cores:
/// 5,400 tiles end to end took 8.6 s with 2 threads against 10.6 s with 1 (median of 2
/// alternating pairs, load average ~5 from other builds): decoding overlaps inference on
/// its own thread, and the intra-op threads do not spin when idle (see [`Tuning::default`]),
/// so a second thread costs nothing while the model waits. Set `runtime.intra_threads = 1`
/// to leave a core free on a shared laptop.
pub fn default_threads() -> usize {
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    n.clamp(1, 4)
}

/// Builds one session with the agent's settings: no idle spinning (it burns a laptop's
/// battery), full graph optimisation.
pub fn build_session(path: &Path, opts: &SessionOptions) -> ort::Result<Session> {
    build_tuned_session(
        path,
        &Tuning {
            intra_threads: opts.intra_threads,
            ..Tuning::default()
        },
    )
}

/// Every session option the bench searches over (the agent's choice is [`Tuning::default`]
/// with its thread count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Tuning {
    /// Intra-op threads.
    pub intra_threads: usize,
    /// Whether idle intra-op threads spin (ONNX Runtime's default) instead of sleeping.
    pub spinning: bool,
    /// Graph optimisation: 1 basic, 2 extended, 3 all (layout included).
    pub optimization: u8,
    /// ONNX Runtime's memory pattern planner (reuses buffers between runs of one shape).
    pub memory_pattern: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            intra_threads: 1,
            spinning: false,
            optimization: 3,
            memory_pattern: true,
        }
    }
}

impl std::fmt::Display for Tuning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} thread(s), spinning {}, graph optimisation level {}, memory pattern {}",
            self.intra_threads,
            if self.spinning { "on" } else { "off" },
            self.optimization,
            if self.memory_pattern { "on" } else { "off" }
        )
    }
}

/// Builds one session with explicit settings.
pub fn build_tuned_session(path: &Path, t: &Tuning) -> ort::Result<Session> {
    let env = super::runtime::environment().ok_or_else(|| {
        ort::Error::new("ONNX Runtime is not loaded (call model::runtime::init first)")
    })?;
    let level = match t.optimization {
        0 => GraphOptimizationLevel::Disable,
        1 => GraphOptimizationLevel::Level1,
        2 => GraphOptimizationLevel::Level2,
        _ => GraphOptimizationLevel::Level3,
    };
    Session::builder(env)?
        .with_optimization_level(level)?
        .with_intra_threads(t.intra_threads.max(1))?
        .with_inter_threads(1)?
        .with_intra_op_spinning(t.spinning)?
        .with_memory_pattern(t.memory_pattern)?
        .commit_from_file(path)
}

struct State {
    idle: Vec<Session>,
    created: usize,
}

/// A pool of sessions over one ONNX file.
pub struct SessionPool {
    path: PathBuf,
    opts: SessionOptions,
    state: Mutex<State>,
    returned: Condvar,
    /// Input names of the model, read from the first session.
    pub input_names: Vec<String>,
    /// Output names of the model, read from the first session.
    pub output_names: Vec<String>,
}

impl SessionPool {
    /// Builds the first session at once (so a broken model fails at load, not later).
    pub fn new(path: &Path, opts: SessionOptions) -> ort::Result<SessionPool> {
        let first = build_session(path, &opts)?;
        let input_names = first
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        let output_names = first
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        Ok(SessionPool {
            path: path.to_path_buf(),
            opts,
            state: Mutex::new(State {
                idle: vec![first],
                created: 1,
            }),
            returned: Condvar::new(),
            input_names,
            output_names,
        })
    }

    /// Takes a session, creating one if all are busy and the pool is not full, or waiting.
    pub fn get(&self) -> ort::Result<PooledSession<'_>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(s) = st.idle.pop() {
                return Ok(PooledSession {
                    pool: self,
                    session: Some(s),
                });
            }
            if st.created < self.opts.max_sessions.max(1) {
                st.created += 1;
                drop(st);
                return match build_session(&self.path, &self.opts) {
                    Ok(s) => Ok(PooledSession {
                        pool: self,
                        session: Some(s),
                    }),
                    Err(e) => {
                        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                        st.created -= 1;
                        Err(e)
                    }
                };
            }
            st = self.returned.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Number of sessions created so far.
    pub fn created(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).created
    }
}

/// A session borrowed from a pool; goes back when dropped.
pub struct PooledSession<'a> {
    pool: &'a SessionPool,
    session: Option<Session>,
}

impl std::ops::Deref for PooledSession<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.session.as_ref().expect("session present until drop")
    }
}

impl std::ops::DerefMut for PooledSession<'_> {
    fn deref_mut(&mut self) -> &mut Session {
        self.session.as_mut().expect("session present until drop")
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let mut st = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
            st.idle.push(s);
            drop(st);
            self.pool.returned.notify_one();
        }
    }
}
