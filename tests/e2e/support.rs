//! Shared fixtures of the cluster suites: the cluster handle, kubectl, namespaces that clean up
//! after themselves, waiting for conditions with deadlines, and a small HTTP client.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// One cluster test: its name (module path and function) and how to run it. The e2e harness and
/// the cluster benchmarks (which reuse the suites' helpers) share these.
pub type TestFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

// The benchmarks compile the suites for their helpers and never run a list.
#[allow(dead_code)]
pub struct Test {
    pub name: &'static str,
    pub run: fn(Ctx) -> TestFuture,
}

/// `tests![f, g]`: the list of a suite's tests, named by module path.
#[macro_export]
macro_rules! tests {
    ($($f:ident),* $(,)?) => {
        vec![$($crate::support::Test { name: concat!(module_path!(), "::", stringify!($f)), run: |ctx| Box::pin($f(ctx)) }),*]
    };
}

/// Everything a test needs to reach the cluster.
#[derive(Clone)]
pub struct Ctx {
    pub client: Client,
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub helm: PathBuf,
    /// The project's image (operator, agent, test workload), already imported on the node.
    pub image: String,
    pub root: PathBuf,
    pub http: HttpClient<HttpConnector, Full<bytes::Bytes>>,
}

fn env_path(name: &str) -> Result<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("{name} is not set: the cluster suites run through `make test` (hack/test.sh), which brings up the test bed"))
}

impl Ctx {
    pub async fn from_env() -> Result<Self> {
        let kubeconfig = env_path("QUORATE_KUBECONFIG")?;
        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig)
                .with_context(|| format!("reading {}", kubeconfig.display()))?,
            &KubeConfigOptions::default(),
        )
        .await?;
        let client = Client::try_from(config)?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Ok(Self {
            client,
            kubeconfig,
            kubectl: env_path("QUORATE_KUBECTL")?,
            helm: env_path("HELM")?,
            image: std::env::var("QUORATE_IMAGE")
                .map_err(|_| anyhow!("QUORATE_IMAGE is not set (make test sets it)"))?,
            root: crate::manifests::repo_root(),
            http: HttpClient::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// The test bed's image of workload `name` (a line of hack/debian-images.txt), used in
    /// place of the public image an example names: `QUORATE_<NAME>_IMAGE`, which the scripts
    /// that run the suites set for every workload image.
    #[allow(dead_code)] // the benchmarks that include this file without the workload suites
    pub fn workload_image(&self, name: &str) -> Result<String> {
        let var = format!("QUORATE_{}_IMAGE", name.to_uppercase());
        std::env::var(&var).map_err(|_| anyhow!("{var} is not set (make test sets it)"))
    }

    /// Runs kubectl; Ok(stdout) on success, an error with stderr otherwise.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = run(
            Command::new(&self.kubectl)
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(args),
            stdin,
        )?;
        if out.0 {
            Ok(out.1)
        } else {
            bail!("kubectl {} failed: {}", args.join(" "), out.2.trim())
        }
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn kubectl_fails(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let (ok, stdout, stderr) = run(
            Command::new(&self.kubectl)
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(args),
            stdin,
        )?;
        if ok {
            bail!(
                "kubectl {} succeeded but should have failed: {stdout}",
                args.join(" ")
            );
        }
        Ok(stderr)
    }

    pub fn helm(&self, args: &[&str]) -> Result<String> {
        let out = run(
            Command::new(&self.helm)
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(args),
            None,
        )?;
        if out.0 {
            Ok(out.1)
        } else {
            bail!("helm {} failed: {}", args.join(" "), out.2.trim())
        }
    }

    /// A fresh namespace, deleted when the guard drops (also when the test fails).
    pub fn namespace(&self, prefix: &str) -> Result<Namespace> {
        let name = format!("{prefix}-{:04x}", rand::random::<u16>());
        self.kubectl(&["create", "namespace", &name])?;
        Ok(Namespace {
            name,
            ctx: self.clone(),
        })
    }

    /// GET over plain HTTP; (status, body). Only ever aimed at the test bed's addresses.
    /// With a `host` (a request through the Gateway, which balances per request) the connection
    /// is kept for the next request; without one (a Service or a pod) every request opens its
    /// own: a kept connection through a ClusterIP stays with the pod kube-proxy chose when it was
    /// opened, so "who answers -rw now" would keep asking the old primary.
    pub async fn http_get(&self, url: &str, host: Option<&str>) -> Result<(u16, String)> {
        let mut req = hyper::Request::get(url);
        match host {
            Some(h) => req = req.header("host", h),
            None => req = req.header("connection", "close"),
        }
        let req = req.body(Full::new(bytes::Bytes::new()))?;
        let resp = tokio::time::timeout(Duration::from_secs(5), self.http.request(req))
            .await
            .context("HTTP timeout")??;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    #[allow(dead_code)] // used by some suites, not by every benchmark that includes this file
    pub async fn http_post(&self, url: &str, body: &str) -> Result<(u16, String)> {
        let req = hyper::Request::post(url)
            .header("connection", "close")
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(body.to_owned())))?;
        let resp = tokio::time::timeout(Duration::from_secs(5), self.http.request(req))
            .await
            .context("HTTP timeout")??;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<(bool, String, String)> {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

pub struct Namespace {
    pub name: String,
    ctx: Ctx,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if std::env::var_os("E2E_KEEP_NAMESPACES").is_some() {
            eprintln!("keeping namespace {}", self.name);
            return;
        }
        let _ = run(
            Command::new(&self.ctx.kubectl)
                .arg("--kubeconfig")
                .arg(&self.ctx.kubeconfig)
                .args(["delete", "namespace", &self.name, "--wait=false"]),
            None,
        );
    }
}

/// Polls `probe` until it yields a value or `timeout` passes; the error names what was awaited
/// and the last probe error.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no result");
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a background writer has had acknowledged so far, shared with the test that waits for
/// it: a round ends once the writer itself saw its writes taken again, not a separate probe
/// (the writer may still sit in a bounded retry when a probe already succeeded).
#[allow(dead_code)] // support.rs is also compiled into benches that run no writer
pub struct Acks<A>(std::sync::Arc<std::sync::Mutex<Vec<A>>>);

impl<A> Clone for Acks<A> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

#[allow(dead_code)]
impl<A: Clone> Acks<A> {
    pub fn new() -> Self {
        Self(Default::default())
    }

    pub fn push(&self, a: A) {
        self.lock().push(a);
    }

    pub fn snapshot(&self) -> Vec<A> {
        self.lock().clone()
    }

    /// Waits (bounded) until an acknowledged write satisfies `done`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&A) -> bool,
    ) -> Result<()> {
        wait_for(what, timeout, || async {
            Ok(self.lock().iter().any(&done).then_some(()))
        })
        .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<A>> {
        // A writer that panicked leaves what it had; the test still reads it.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A pod spec fragment: the project's image running the test workload.
pub fn testapp_container(image: &str) -> serde_json::Value {
    serde_json::json!({
        "name": "app", "image": image, "imagePullPolicy": "IfNotPresent",
        "command": ["/quorate-testapp"], "args": ["--listen", "0.0.0.0:8080"],
        "ports": [{"containerPort": 8080, "name": "http"}],
        "securityContext": restricted_container(),
    })
}

pub fn restricted_container() -> serde_json::Value {
    serde_json::json!({
        "runAsNonRoot": true, "runAsUser": 65532, "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

pub const BUSYBOX: &str = "docker.io/library/busybox:1.35-testbed";
