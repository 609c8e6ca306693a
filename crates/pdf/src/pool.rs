//! The renderer children, from the worker's side: a small pool of processes, each running
//! [`crate::child::serve`], each with a memory limit, each call with a deadline.
//!
//! A document takes a child for as long as it is read ([`Session`]), so PDFium's single lock
//! (its `thread_safe` mode serialises every call) costs nothing: the children render in
//! parallel. A child that does not answer within the deadline is killed; one that dies
//! (a segfault, an abort, its memory limit) is reaped; either way the session's error says so
//! and the next session starts a fresh child. Nothing a document does can reach the worker
//! process.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::protocol::r#async::{read_frame, write_frame};
use crate::protocol::{Failure, PageData, Request, Response};
use crate::PdfError;

/// How to start and bound the renderer children.
#[derive(Debug, Clone)]
pub struct RendererConfig {
    /// The program and its arguments; `--library <path>` is added.
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// PDFium's shared library.
    pub library: PathBuf,
    /// Children at most (documents read at once).
    pub children: usize,
    /// Each child's address-space limit in bytes (`RLIMIT_AS`; 0: none).
    pub memory_limit: u64,
    /// Sets the children's test faults (see [`crate::child`]).
    pub test_faults: bool,
}

struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

/// The pool.
#[derive(Clone)]
pub struct Renderers {
    cfg: Arc<RendererConfig>,
    idle: Arc<Mutex<Vec<Proc>>>,
    slots: Arc<Semaphore>,
}

impl Renderers {
    pub fn new(cfg: RendererConfig) -> Renderers {
        let n = cfg.children.max(1);
        Renderers {
            cfg: Arc::new(cfg),
            idle: Arc::default(),
            slots: Arc::new(Semaphore::new(n)),
        }
    }

    pub fn config(&self) -> &RendererConfig {
        &self.cfg
    }

    /// A child for one document: an idle one, or a new one. Waits while all are busy.
    pub async fn session(&self) -> Result<Session, PdfError> {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let proc = match idle {
            Some(p) => p,
            None => self.spawn()?,
        };
        Ok(Session {
            pool: self.clone(),
            proc: Some(proc),
            _permit: permit,
        })
    }

    fn spawn(&self) -> Result<Proc, PdfError> {
        let mut cmd = Command::new(&self.cfg.program);
        cmd.args(&self.cfg.args)
            .arg("--library")
            .arg(&self.cfg.library)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if self.cfg.test_faults {
            cmd.env(crate::child::TEST_FAULTS_ENV, "1");
        } else {
            cmd.env_remove(crate::child::TEST_FAULTS_ENV);
        }
        let limit = self.cfg.memory_limit;
        if limit > 0 {
            // SAFETY: only async-signal-safe calls (setrlimit) between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let r = libc::rlimit {
                        rlim_cur: limit as libc::rlim_t,
                        rlim_max: limit as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_AS, &r) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().map_err(|e| {
            PdfError::Renderer(format!(
                "cannot start the PDF renderer {}: {e}",
                self.cfg.program.display()
            ))
        })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        Ok(Proc {
            child,
            stdin,
            stdout,
        })
    }

    /// Whether a renderer starts and reads a known-good one-page PDF: tells a document that
    /// crashes its renderer from a renderer that cannot work (a missing or broken library).
    pub async fn probe(&self) -> Result<(), PdfError> {
        let mut s = self.session().await?;
        let d = Duration::from_secs(30);
        match s.open(crate::PROBE_PDF.to_vec(), d).await? {
            1 => {}
            n => {
                return Err(PdfError::Renderer(format!(
                    "the probe PDF has 1 page, the renderer says {n}"
                )))
            }
        }
        let p = s.page(0, 72.0, 200, 72.0, d).await?;
        s.render(0, p.width_px, p.height_px, d).await?;
        Ok(())
    }
}

/// One document's use of a child. Dropped in the middle of a call (a document deadline), the
/// child is killed; dropped between calls, it goes back to the pool.
pub struct Session {
    pool: Renderers,
    proc: Option<Proc>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(p);
        }
    }
}

impl Session {
    /// One request and its answer within `deadline`. A deadline passed kills the child; a child
    /// gone (crashed) is reaped; both are errors of this document.
    async fn call(
        &mut self,
        req: &Request,
        payload: &[u8],
        deadline: Duration,
        what: &str,
    ) -> Result<(Response, Vec<u8>), PdfError> {
        let mut proc = match self.proc.take() {
            Some(p) => p,
            None => self.pool.spawn()?,
        };
        let exchange = async {
            write_frame(&mut proc.stdin, req, payload).await?;
            read_frame::<Response>(&mut proc.stdout).await
        };
        match tokio::time::timeout(deadline, exchange).await {
            Ok(Ok(answer)) => {
                self.proc = Some(proc);
                Ok(answer)
            }
            Ok(Err(io)) => {
                // The child is gone or talks nonsense: find out how it ended.
                let _ = proc.child.start_kill();
                let status = tokio::time::timeout(Duration::from_secs(5), proc.child.wait()).await;
                let how = match status {
                    Ok(Ok(s)) => describe_exit(s),
                    _ => format!("({io})"),
                };
                Err(PdfError::Crashed(format!(
                    "the PDF renderer ended while {what}: {how}"
                )))
            }
            Err(_) => {
                let _ = proc.child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), proc.child.wait()).await;
                Err(PdfError::Timeout(format!(
                    "the PDF renderer did not finish {what} within {} s",
                    deadline.as_secs_f32()
                )))
            }
        }
    }

    fn unexpected(r: Response) -> PdfError {
        PdfError::Renderer(format!("unexpected answer from the PDF renderer: {r:?}"))
    }

    fn failed(failure: Failure, message: String, page: Option<u32>) -> PdfError {
        match failure {
            Failure::Encrypted => PdfError::Encrypted,
            Failure::Malformed => PdfError::Malformed(message),
            Failure::Page => PdfError::Page {
                page: page.map_or(0, |p| p + 1),
                message,
            },
            Failure::Protocol => PdfError::Renderer(message),
        }
    }

    /// Opens `bytes` (the empty user password only); the page count.
    pub async fn open(&mut self, bytes: Vec<u8>, deadline: Duration) -> Result<u32, PdfError> {
        match self
            .call(&Request::Open, &bytes, deadline, "opening the document")
            .await?
        {
            (Response::Opened { pages }, _) => Ok(pages),
            (Response::Failed { failure, message }, _) => Err(Self::failed(failure, message, None)),
            (r, _) => Err(Self::unexpected(r)),
        }
    }

    /// Page `index` (from 0): its size and text layer at `dpi` (a scan's own resolution, at
    /// most `max_scan_dpi`, on a scanned page), at most `max_side` pixels.
    pub async fn page(
        &mut self,
        index: u32,
        dpi: f32,
        max_side: u32,
        max_scan_dpi: f32,
        deadline: Duration,
    ) -> Result<PageData, PdfError> {
        let what = format!("reading page {}", index + 1);
        let req = Request::Page {
            index,
            dpi,
            max_side,
            max_scan_dpi,
        };
        match self.call(&req, &[], deadline, &what).await? {
            (Response::Page(p), _) => Ok(p),
            (Response::Failed { failure, message }, _) => {
                Err(Self::failed(failure, message, Some(index)))
            }
            (r, _) => Err(Self::unexpected(r)),
        }
    }

    /// Page `index` rendered at `width` × `height`.
    pub async fn render(
        &mut self,
        index: u32,
        width: u32,
        height: u32,
        deadline: Duration,
    ) -> Result<image::RgbImage, PdfError> {
        let what = format!("rendering page {}", index + 1);
        match self
            .call(
                &Request::Render {
                    index,
                    width,
                    height,
                },
                &[],
                deadline,
                &what,
            )
            .await?
        {
            (
                Response::Rendered {
                    width: w,
                    height: h,
                },
                px,
            ) => image::RgbImage::from_raw(w, h, px).ok_or_else(|| {
                PdfError::Renderer(format!(
                    "the renderer sent {w}x{h} with the wrong pixel count"
                ))
            }),
            (Response::Failed { failure, message }, _) => {
                Err(Self::failed(failure, message, Some(index)))
            }
            (r, _) => Err(Self::unexpected(r)),
        }
    }
}

fn describe_exit(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (_, Some(sig)) => format!(
            "killed by signal {sig}{}",
            match sig {
                libc::SIGSEGV => " (segmentation fault)",
                libc::SIGABRT => " (abort)",
                libc::SIGKILL => " (killed: its memory limit, or from outside)",
                libc::SIGBUS => " (bus error)",
                _ => "",
            }
        ),
        (Some(c), None) => format!("exit status {c}"),
        _ => "an unknown end".into(),
    }
}
