//! Queues in front of the backend (spec §15), against a stand-in one-job-at-a-time backend that
//! counts the jobs it runs at once and holds each until the test lets it finish: turns per
//! person, the refusals, clients that leave while waiting (HTTP/1.1 and HTTP/2), reload,
//! shutdown, and what the operator sees (`/usage`, `/metrics`, the access log).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(30);

/// A backend that runs jobs as a GPU would: each request is a job that lasts until the test
/// releases it. It records the order in which jobs arrived and the most it ran at once.
struct GpuBackend {
    addr: SocketAddr,
    arrived: Arc<Mutex<Vec<String>>>,
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    done: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl GpuBackend {
    async fn start() -> GpuBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(Semaphore::new(0));
        let (a, r, m, d) = (arrived.clone(), running.clone(), most.clone(), done.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (a, r, m, d) = (a.clone(), r.clone(), m.clone(), d.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (a, r, m, d) = (a.clone(), r.clone(), m.clone(), d.clone());
                        async move {
                            let job = req
                                .uri()
                                .query()
                                .unwrap_or("")
                                .trim_start_matches("job=")
                                .to_string();
                            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                            m.fetch_max(now, Ordering::SeqCst);
                            // The job's input, read whole as a GPU app does before it runs.
                            let body = http_body_util::BodyExt::collect(req.into_body())
                                .await
                                .map(|b| b.to_bytes().len())
                                .unwrap_or(usize::MAX);
                            let job = if body > 0 {
                                format!("{job}:{body}")
                            } else {
                                job
                            };
                            a.lock().unwrap().push(job.clone());
                            // The job runs until the test lets one finish.
                            if let Ok(p) = d.acquire().await {
                                p.forget();
                            }
                            r.fetch_sub(1, Ordering::SeqCst);
                            use http_body_util::BodyExt as _;
                            if job.starts_with("endless") {
                                // A result that never ends, for a client that never reads.
                                let (mut tx, body) = http_body_util::channel::Channel::<
                                    Bytes,
                                    std::convert::Infallible,
                                >::new(4);
                                tokio::spawn(async move {
                                    let chunk = Bytes::from(vec![b'e'; 64 * 1024]);
                                    while tx
                                        .send(hyper::body::Frame::data(chunk.clone()))
                                        .await
                                        .is_ok()
                                    {}
                                });
                                return Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                    body.boxed(),
                                ));
                            }
                            Ok(hyper::Response::new(
                                Full::new(Bytes::from(format!("done {job}")))
                                    .map_err(|e| match e {})
                                    .boxed(),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        GpuBackend {
            addr,
            arrived,
            running,
            most,
            done,
            task,
        }
    }

    fn arrived(&self) -> Vec<String> {
        self.arrived.lock().unwrap().clone()
    }

    /// Lets `n` running (or future) jobs finish.
    fn finish(&self, n: usize) {
        self.done.add_permits(n);
    }

    /// Polls until `n` jobs have arrived.
    async fn wait_arrived(&self, n: usize) {
        poll(|| self.arrived.lock().unwrap().len() >= n, "jobs to arrive").await;
    }
}

impl Drop for GpuBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `cond` for up to 50 s (1000 looks).
async fn poll(mut cond: impl FnMut() -> bool, what: &str) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        poll_pause().await;
    }
    panic!("timed out waiting for {what}");
}

/// The queue's `waiting` count, from the admin listener's `/usage`.
async fn waiting(admin: SocketAddr) -> u64 {
    let (status, body) = admin_get(admin, "/usage").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["queues"][0]["waiting"].as_u64().unwrap()
}

/// Polls `/usage` until the queue has `n` jobs waiting.
async fn wait_waiting(admin: SocketAddr, n: u64) {
    for _ in 0..1000 {
        if waiting(admin).await == n {
            return;
        }
        poll_pause().await;
    }
    panic!("the queue never had {n} jobs waiting");
}

fn queue_config(queue: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[queue]]\nname = \"gpu\"\n{queue}\n\n\
         [[route]]\npath = \"/api\"\naction = \"allow\"\nqueue = \"gpu\"\n"
    )
}

/// Sends one job over a fresh HTTP/1.1 connection as `who`; the answer's status and body.
fn job(
    proxy: SocketAddr,
    who: Arc<rustls::ClientConfig>,
    name: &str,
) -> tokio::task::JoinHandle<Got> {
    let path = format!("/api/run?job={name}");
    tokio::spawn(async move { get_once(proxy, who, &path).await })
}

/// A stand-in GPU behind a proxy whose queue has the settings `queue`, already running
/// alice's job `a0`: the GPU, the proxy, its admin listener and `a0`'s answer to come.
async fn gpu_running_a0(
    queue: &str,
) -> (GpuBackend, Proxy, SocketAddr, tokio::task::JoinHandle<Got>) {
    let gpu = GpuBackend::start().await;
    let proxy = Proxy::start(gpu.addr, &queue_config(queue)).await;
    let admin = proxy.admin.unwrap();
    let first = job(proxy.addr, alice(), "a0");
    gpu.wait_arrived(1).await;
    (gpu, proxy, admin, first)
}

fn zhang() -> Arc<rustls::ClientConfig> {
    client_config(Some(&test_pki().zhang), &["http/1.1"])
}

/// One person floods the queue with ten jobs; another's single job then waits for at most one
/// job of the flooder, all of the flooder's jobs still finish, the backend never runs more than
/// `slots` at once, and `/usage`, `/metrics` and the access log show who used the GPU.
#[tokio::test]
async fn a_flood_of_one_person_does_not_starve_another() {
    let (logs, _guard) = LogCapture::start();
    let gpu = GpuBackend::start().await;
    let proxy = Proxy::start(gpu.addr, &queue_config("slots = 1\nmax_waiting = 20")).await;
    let admin = proxy.admin.unwrap();
    let mut jobs = Vec::new();
    jobs.push(job(proxy.addr, alice(), "a0"));
    gpu.wait_arrived(1).await;
    for i in 1..10 {
        jobs.push(job(proxy.addr, alice(), &format!("a{i}")));
        // In order, so the flooder's own jobs have a known order.
        wait_waiting(admin, i).await;
    }
    let b = job(proxy.addr, zhang(), "b0");
    wait_waiting(admin, 10).await;
    // The flooder's first job finishes: the other person's job is next, ahead of nine.
    gpu.finish(1);
    gpu.wait_arrived(2).await;
    assert_eq!(gpu.arrived()[1], "b0", "{:?}", gpu.arrived());
    // The operator's page shows the queue and the flooder's jobs on the flooder's row.
    let mut page = serde_json::Value::Null;
    for _ in 0..200 {
        let (_, json) = admin_get(admin, "/?format=json").await;
        page = serde_json::from_str(&json).unwrap();
        let alice_row = page["people"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["cn"] == "admin@face.analyze");
        if alice_row.is_some_and(|r| r["queue"]["jobs"] == 1) {
            break;
        }
        poll_pause().await;
    }
    let q = &page["queues"][0];
    assert_eq!(
        (&q["name"], &q["slots"], &q["busy"], &q["waiting"]),
        (&"gpu".into(), &1.into(), &1.into(), &9.into()),
        "{page}"
    );
    let alice_row = page["people"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cn"] == "admin@face.analyze")
        .unwrap_or_else(|| panic!("no row for the flooder: {page}"));
    assert_eq!(alice_row["queue"]["running"], 0, "{alice_row}");
    assert_eq!(alice_row["queue"]["waiting"], 9, "{alice_row}");
    assert_eq!(alice_row["queue"]["jobs"], 1, "{alice_row}");
    gpu.finish(10);
    let b = b.await.unwrap();
    assert_eq!(b.status, 200);
    assert_eq!(b.body, "done b0");
    for (i, j) in jobs.into_iter().enumerate() {
        let got = j.await.unwrap();
        assert_eq!(got.status, 200, "a{i}: {}", got.body);
        assert_eq!(got.body, format!("done a{i}"));
    }
    let order = gpu.arrived();
    let expected: Vec<String> = std::iter::once("a0".to_string())
        .chain(std::iter::once("b0".to_string()))
        .chain((1..10).map(|i| format!("a{i}")))
        .collect();
    assert_eq!(order, expected, "each job ran once, the flooder's in order");
    assert_eq!(gpu.most.load(Ordering::SeqCst), 1, "never more than slots");
    assert_eq!(gpu.running.load(Ordering::SeqCst), 0);

    let (_, usage) = admin_get(admin, "/usage").await;
    let usage: serde_json::Value = serde_json::from_str(&usage).unwrap();
    let q = &usage["queues"][0];
    assert_eq!(q["name"], "gpu");
    assert_eq!(q["busy"], 0);
    let people = q["people"].as_array().unwrap();
    assert_eq!(people.len(), 2, "{usage}");
    let alice_row = people
        .iter()
        .find(|p| {
            p["subject_dn"]
                .as_str()
                .is_some_and(|d| d.contains("CN=admin@face.analyze"))
        })
        .unwrap_or_else(|| panic!("no row for alice: {usage}"));
    assert_eq!(alice_row["jobs_done"], 10);
    assert_eq!(alice_row["running"], 0);
    assert_eq!(alice_row["waiting"], 0);
    assert_eq!(alice_row["fingerprint"].as_str().unwrap().len(), 64);
    assert!(alice_row["busy_seconds"].as_f64().unwrap() > 0.0);
    assert!(alice_row["last_seen"].as_str().unwrap().ends_with('Z'));

    let (_, metrics) = admin_get(admin, "/metrics").await;
    for line in [
        "certgate_queue_jobs_total{queue=\"gpu\"} 11",
        "certgate_queue_slots{queue=\"gpu\"} 1",
        "certgate_queue_busy{queue=\"gpu\"} 0",
        "certgate_queue_waiting{queue=\"gpu\"} 0",
        "certgate_queue_wait_seconds_count{queue=\"gpu\"} 11",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    assert!(metrics.contains("certgate_queue_busy_seconds_total{queue=\"gpu\"}"));
    // The access-log line of a job that waited says how long.
    let text = logs.wait_for(&["queue_wait_ms", "/api/run"]).await;
    assert!(text.contains("queue_wait_ms"), "{text}");
}

/// Beyond `max_waiting` a person's job is refused at once with 429 `queue_full` and
/// `Retry-After`; another person may still queue; a job that waits `max_wait` gets 503
/// `queue_timeout` with `Retry-After`. Neither reaches the backend.
#[tokio::test]
async fn queue_full_and_queue_timeout_are_refused_with_retry_after() {
    let (gpu, proxy, admin, first) =
        gpu_running_a0("slots = 1\nmax_waiting = 2\nmax_wait = \"1500ms\"").await;
    let w1 = job(proxy.addr, alice(), "a1");
    let w2 = job(proxy.addr, alice(), "a2");
    wait_waiting(admin, 2).await;
    let full = get_once(proxy.addr, alice(), "/api/run?job=a3").await;
    assert_eq!(full.status, 429, "{}", full.body);
    assert_eq!(full.json()["error"], "queue_full");
    let retry: u64 = full.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    // Someone else is not refused for the flooder's jobs.
    let other = job(proxy.addr, zhang(), "b0");
    wait_waiting(admin, 3).await;
    // Nothing finishes: every waiting job times out.
    for w in [w1, w2, other] {
        let got = w.await.unwrap();
        assert_eq!(got.status, 503, "{}", got.body);
        assert_eq!(got.json()["error"], "queue_timeout");
        assert!(got.headers.contains_key("retry-after"));
    }
    assert_eq!(waiting(admin).await, 0);
    gpu.finish(1);
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(
        gpu.arrived(),
        ["a0"],
        "refused jobs never reach the backend"
    );
    let (_, metrics) = admin_get(admin, "/metrics").await;
    assert!(metrics.contains("certgate_queue_rejected_total{queue=\"gpu\",reason=\"full\"} 1"));
    assert!(metrics.contains("certgate_queue_rejected_total{queue=\"gpu\",reason=\"timeout\"} 3"));
}

/// A client that hangs up while its job waits (HTTP/1.1: the connection closes) gives its place
/// up at once, and its job is never forwarded.
#[tokio::test]
async fn a_job_abandoned_while_waiting_is_never_forwarded_http1() {
    let (gpu, proxy, admin, first) = gpu_running_a0("slots = 1").await;
    let mut tls = tls_connect(proxy.addr, zhang()).await.unwrap();
    tls.write_all(b"GET /api/run?job=gone HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    wait_waiting(admin, 1).await;
    drop(tls);
    wait_waiting(admin, 0).await;
    let next = job(proxy.addr, zhang(), "b1");
    wait_waiting(admin, 1).await;
    gpu.finish(2);
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(next.await.unwrap().body, "done b1");
    assert_eq!(gpu.arrived(), ["a0", "b1"]);
}

/// The same with an upload over HTTP/1.1: certgate does not read a waiting job's body, so it
/// watches the connection instead, and a client that sent its upload and hung up leaves the
/// queue at once; its job is never forwarded.
#[tokio::test]
async fn an_upload_abandoned_while_waiting_is_never_forwarded_http1() {
    let (gpu, proxy, admin, first) = gpu_running_a0("slots = 1").await;
    let mut tls = tls_connect(proxy.addr, zhang()).await.unwrap();
    let body = vec![b'p'; 20_000];
    let head = format!(
        "POST /api/run?job=gone HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&body).await.unwrap();
    tls.flush().await.unwrap();
    wait_waiting(admin, 1).await;
    drop(tls);
    wait_waiting(admin, 0).await;
    gpu.finish(1);
    assert_eq!(first.await.unwrap().status, 200);
    let next = job(proxy.addr, zhang(), "b1");
    gpu.wait_arrived(2).await;
    gpu.finish(1);
    assert_eq!(next.await.unwrap().body, "done b1");
    assert_eq!(gpu.arrived(), ["a0", "b1"]);
}

/// A WebSocket on a queued route is a job for as long as its tunnel is open: it holds its slot
/// (another person's upgrade waits its turn and reaches the backend only once the first tunnel
/// closed), rather than freeing it with the 101 and letting every tunnel run beside the slots.
#[tokio::test]
async fn a_websocket_holds_its_slot_until_the_tunnel_closes() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        backend.addr,
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[queue]]\nname = \"gpu\"\nslots = 1\n\n\
         [[route]]\npath = \"/ws\"\naction = \"allow\"\nqueue = \"gpu\"\n",
    )
    .await;
    let admin = proxy.admin.unwrap();
    let (_, mut first) = open_websocket(proxy.addr).await;
    first.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(LIMIT, first.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"ping");
    let (_, usage) = admin_get(admin, "/usage").await;
    let usage: serde_json::Value = serde_json::from_str(&usage).unwrap();
    assert_eq!(
        usage["queues"][0]["busy"], 1,
        "the open tunnel holds no slot: {usage}"
    );
    let second = tokio::spawn(async move {
        let mut send = h1(proxy.addr, zhang()).await;
        send.send_request(websocket_request("/ws")).await.unwrap()
    });
    wait_waiting(admin, 1).await;
    assert_eq!(
        backend.seen().len(),
        1,
        "the second upgrade reached the backend"
    );
    drop(first);
    let second = tokio::time::timeout(LIMIT, second).await.unwrap().unwrap();
    assert_eq!(second.status(), 101);
    assert_eq!(backend.seen().len(), 2);
}

/// A job whose server refuses the connection fails over to the next server and waits for a
/// slot there: the slot it had on the refusing server is not the one it runs in, so another
/// person's job on the live server waits its turn, and the live server never runs more than
/// `slots` (round robin sends one of the two jobs to the dead server first).
#[tokio::test]
async fn a_job_that_fails_over_takes_a_slot_on_the_server_it_runs_on() {
    let gpu = GpuBackend::start().await;
    let dead = crate::common::backend::dead_addr().await;
    let toml = test_config_servers(
        &[
            format!("{{ url = \"http://{dead}\" }}"),
            format!("{{ url = \"http://{}\" }}", gpu.addr),
        ],
        "balance = \"round_robin\"\nmax_fails = 1\nfail_timeout = \"60s\"\n\
         [upstream.health]\nenabled = false\n",
        &queue_config("slots = 1"),
    );
    let proxy = Proxy::start_with(&toml).await;
    let admin = proxy.admin.unwrap();
    let first = job(proxy.addr, alice(), "a0");
    gpu.wait_arrived(1).await;
    let second = job(proxy.addr, zhang(), "b0");
    for _ in 0..1000 {
        if gpu.arrived().len() >= 2 || waiting(admin).await == 1 {
            break;
        }
        poll_pause().await;
    }
    assert_eq!(
        gpu.arrived(),
        ["a0"],
        "the live server ran two jobs at once"
    );
    wait_waiting(admin, 1).await;
    gpu.finish(2);
    assert_eq!(first.await.unwrap().body, "done a0");
    assert_eq!(second.await.unwrap().body, "done b0");
    assert_eq!(gpu.most.load(Ordering::SeqCst), 1, "never more than slots");
}

/// A `max_wait` too long for the clock to add (hundreds of billions of years) is waited as
/// "never": the job waits its turn and runs, and the request is not lost to a panic.
#[tokio::test]
async fn a_max_wait_beyond_the_clock_waits_its_turn() {
    let (gpu, proxy, admin, first) =
        gpu_running_a0("slots = 1\nmax_wait = \"292300000000years\"").await;
    let second = job(proxy.addr, zhang(), "b0");
    wait_waiting(admin, 1).await;
    gpu.finish(2);
    assert_eq!(first.await.unwrap().body, "done a0");
    assert_eq!(second.await.unwrap().body, "done b0");
}

/// Over HTTP/2 a waiting job whose stream the client resets gives its place up and is never
/// forwarded; other streams of the same connection go on and are served in turn.
#[tokio::test]
async fn a_job_abandoned_while_waiting_is_never_forwarded_http2() {
    let (gpu, proxy, admin, first) = gpu_running_a0("slots = 1\nper_identity = 1").await;
    let send = h2(proxy.addr, client_config(Some(&test_pki().zhang), &["h2"])).await;
    let request = |name: &str| {
        Request::get(format!("https://localhost/api/run?job={name}"))
            .body(empty())
            .unwrap()
    };
    let mut s1 = send.clone();
    let gone = tokio::spawn({
        let r = request("gone");
        async move { s1.send_request(r).await }
    });
    wait_waiting(admin, 1).await;
    // Dropping the response future resets the stream.
    gone.abort();
    wait_waiting(admin, 0).await;
    let mut s2 = send.clone();
    let kept = tokio::spawn({
        let r = request("b1");
        async move { read(s2.send_request(r).await.unwrap()).await }
    });
    wait_waiting(admin, 1).await;
    gpu.finish(2);
    assert_eq!(first.await.unwrap().status, 200);
    let kept = kept.await.unwrap();
    assert_eq!((kept.status.as_u16(), kept.body.as_str()), (200, "done b1"));
    assert_eq!(gpu.arrived(), ["a0", "b1"]);
}

/// A reload that keeps the queue's name keeps its running and waiting jobs, and its new
/// `slots` apply at once: a waiting job starts the moment the reload raises the slots. Every
/// job runs exactly once.
#[tokio::test]
async fn reload_keeps_jobs_and_applies_new_slots_at_once() {
    let gpu = GpuBackend::start().await;
    let path = own_config("queue-reload", gpu.addr, "", &queue_config("slots = 1"));
    let proxy = Proxy::start_file(&path).await;
    let admin = proxy.admin.unwrap();
    let a0 = job(proxy.addr, alice(), "a0");
    gpu.wait_arrived(1).await;
    let b0 = job(proxy.addr, zhang(), "b0");
    wait_waiting(admin, 1).await;
    let a1 = job(proxy.addr, alice(), "a1");
    wait_waiting(admin, 2).await;
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("slots = 1", "slots = 2");
    std::fs::write(&path, text).unwrap();
    proxy.shared.reload("test").await.expect("reload");
    // The second slot goes to the waiting job of the person not yet served.
    gpu.wait_arrived(2).await;
    assert_eq!(gpu.arrived()[1], "b0");
    assert_eq!(waiting(admin).await, 1);
    gpu.finish(3);
    for (j, name) in [(a0, "a0"), (b0, "b0"), (a1, "a1")] {
        let got = j.await.unwrap();
        assert_eq!(got.body, format!("done {name}"));
    }
    let mut order = gpu.arrived();
    order.sort();
    assert_eq!(order, ["a0", "a1", "b0"], "each job ran exactly once");
    assert!(gpu.most.load(Ordering::SeqCst) <= 2);
}

/// Shutdown answers jobs still waiting with 503 at once; the running job finishes.
#[tokio::test]
async fn shutdown_answers_waiting_jobs_503() {
    let gpu = GpuBackend::start().await;
    let mut proxy = Proxy::start(gpu.addr, &queue_config("slots = 1")).await;
    let admin = proxy.admin.unwrap();
    let a0 = job(proxy.addr, alice(), "a0");
    gpu.wait_arrived(1).await;
    let b0 = job(proxy.addr, zhang(), "b0");
    wait_waiting(admin, 1).await;
    let stopped = proxy.shutdown();
    let b0 = b0.await.unwrap();
    assert_eq!(b0.status, 503, "{}", b0.body);
    assert!(b0.headers.contains_key("retry-after"));
    gpu.finish(1);
    assert_eq!(a0.await.unwrap().status, 200);
    stopped.await.unwrap();
    assert_eq!(gpu.arrived(), ["a0"]);
}

/// `certgate check` refuses a route that names a queue that does not exist, naming the file,
/// line and key.
#[test]
fn check_refuses_an_unknown_queue_with_file_line_and_key() {
    let dir = scratch_dir("queue-check");
    for f in ["server.crt", "server.key", "ca-bundle.crt", "ca.crl"] {
        std::fs::copy(test_pki().dir.join(f), dir.join(f)).unwrap();
    }
    let path = dir.join("certgate.toml");
    let text = test_config(
        "127.0.0.1:9".parse().unwrap(),
        "",
        "[[queue]]\nname = \"gpu\"\nslots = 0\n\n[[route]]\npath = \"/api\"\naction = \"allow\"\nqueue = \"gpus\"\n",
    );
    std::fs::write(&path, &text).unwrap();
    let out = certgate_cli(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert!(err.contains("certgate.toml"), "{err}");
    assert!(
        err.contains(&format!(":{}:", line_of("queue = \"gpus\"")))
            && err.contains("route[0].queue"),
        "{err}"
    );
    assert!(err.contains("no [[queue]] named \"gpus\""), "{err}");
    assert!(
        err.contains(&format!(":{}:", line_of("slots = 0"))) && err.contains("queue[0].slots"),
        "{err}"
    );
}

/// Starts the one-job-at-a-time Gradio app (`tools/gradio_queue_app.py`) on a free port; a job
/// named X ends when `gate/X` exists.
async fn gradio_gpu(gate: &std::path::Path) -> (tokio::process::Child, SocketAddr) {
    use tokio::io::AsyncBufReadExt as _;
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut child = tokio::process::Command::new(python())
        .arg(format!(
            "{}/tests/e2e/tools/gradio_queue_app.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(addr.port().to_string())
        .arg(gate)
        .env("GRADIO_ANALYTICS_ENABLED", "False")
        // Every app its own cache: Gradio names a cached file by its content's hash, and two
        // apps rewriting the same /tmp/gradio file serve each other a truncated one.
        .env("GRADIO_TEMP_DIR", scratch_dir(&gradio_cache_name()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; run scripts/test", python()));
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim() == "ready" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "the Gradio app did not start");
    (child, addr)
}

/// A real Gradio app (one job at a time) behind a `protocol = "gradio"` queue on its queue
/// join, used as the browser does (join, then the session's event stream): one person's three
/// jobs and another's one. certgate forwards a join only when the GPU's slot is free and holds
/// the rest; the job counts until its `process_completed` passes through the event stream, so
/// the second person's job runs right after the first person's first — where Gradio's own
/// first-come queue would have run all three of the first person's before it. A
/// `gradio_client` script's job then goes through the same queue.
#[tokio::test]
async fn a_real_gradio_app_serves_people_in_turns() {
    let dir = scratch_dir("queue-gradio");
    let gate = dir.join("gate");
    std::fs::create_dir_all(&gate).unwrap();
    let (_app, app) = gradio_gpu(&gate).await;
    let proxy = Proxy::start(
        app,
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[queue]]\nname = \"gpu\"\nslots = 1\nprotocol = \"gradio\"\n\n\
         [[route]]\npath = \"/gradio_api/queue/join\"\naction = \"allow\"\nqueue = \"gpu\"\n",
    )
    .await;
    let (a_cert, a_key) = test_pki().alice.write_pem(&dir, "alice");
    let (b_cert, b_key) = test_pki().zhang.write_pem(&dir, "zhang");
    let spec = |name: &str, (cert, key): (&std::path::Path, &std::path::Path), held: u32| serde_json::json!({"name": name, "cert": cert, "key": key, "held": held});
    let a = (a_cert.as_path(), a_key.as_path());
    let b = (b_cert.as_path(), b_key.as_path());
    let job = serde_json::json!({
        "url": format!("https://localhost:{}", proxy.addr.port()),
        "prefix": "/gradio_api",
        "ca": test_pki().dir.join("ca.crt"),
        "admin": format!("http://{}", proxy.admin.unwrap()),
        "gate": gate,
        "jobs": [spec("a0", a, 0), spec("a1", a, 1), spec("a2", a, 2), spec("b0", b, 3)],
        "client": spec("gc", a, 0),
    });
    let out = run_python_tool("gradio_queue_people.py", &job).await;
    assert_eq!(out["errors"], serde_json::json!([]), "{out}");
    assert_eq!(
        out["completed"],
        serde_json::json!(["a0", "b0", "a1", "a2"]),
        "{out}"
    );
    assert_eq!(out["outputs"]["b0"], "done b0");
    // gradio_client, as a script uses it, goes through the same queue.
    assert_eq!(out["client_output"], "done gc");
    // Every job's slot came back with its process_completed.
    let (_, usage) = admin_get(proxy.admin.unwrap(), "/usage").await;
    let usage: serde_json::Value = serde_json::from_str(&usage).unwrap();
    assert_eq!(usage["queues"][0]["busy"], 0, "{usage}");
    assert_eq!(usage["queues"][0]["protocol"], "gradio");
}

/// Runs `tests/e2e/tools/NAME` with `input` as JSON on stdin; its JSON output.
async fn run_python_tool(name: &str, input: &serde_json::Value) -> serde_json::Value {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new(python())
        .arg(format!(
            "{}/tests/e2e/tools/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("the tool did not finish")
        .unwrap();
    assert!(out.status.success(), "{name} failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// POSTs `body` (JSON) to `path` over a fresh HTTP/1.1 connection as `who`.
async fn post_json(
    proxy: SocketAddr,
    who: Arc<rustls::ClientConfig>,
    path: &str,
    body: &str,
) -> Got {
    let mut send = h1(proxy, who).await;
    let req = Request::post(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap();
    read(send.send_request(req).await.unwrap()).await
}

/// Gradio's REST entry (`POST …/call/{api_name}`) on a `protocol = "gradio"` queue: a script's
/// call is held while another person's call runs, and its job counts until its result stream
/// (`GET …/call/{api_name}/{event_id}`, which does not wait its turn) says `event: complete`.
#[tokio::test]
async fn a_gradio_rest_call_waits_its_turn_and_ends_with_its_stream() {
    let dir = scratch_dir("queue-gradio-call");
    let gate = dir.join("gate");
    std::fs::create_dir_all(&gate).unwrap();
    let (_app, app) = gradio_gpu(&gate).await;
    let proxy = Proxy::start(
        app,
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[queue]]\nname = \"gpu\"\nslots = 1\nprotocol = \"gradio\"\n\n\
         [[route]]\npath = \"/gradio_api/call\"\naction = \"allow\"\nqueue = \"gpu\"\n",
    )
    .await;
    let admin = proxy.admin.unwrap();
    let load = || async {
        let (_, body) = admin_get(admin, "/usage").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        (
            v["queues"][0]["busy"].as_u64().unwrap(),
            v["queues"][0]["waiting"].as_u64().unwrap(),
        )
    };
    let c0 = post_json(
        proxy.addr,
        alice(),
        "/gradio_api/call/job",
        r#"{"data":["c0"]}"#,
    )
    .await;
    assert_eq!(c0.status, 200, "{}", c0.body);
    let c0_id = c0.json()["event_id"].as_str().unwrap().to_string();
    assert_eq!(load().await, (1, 0));
    let c0_stream = format!("/gradio_api/call/job/{c0_id}");
    let stream = tokio::spawn(async move { get_once(proxy.addr, alice(), &c0_stream).await });
    let b0 = tokio::spawn(post_json(
        proxy.addr,
        zhang(),
        "/gradio_api/call/job",
        r#"{"data":["b0"]}"#,
    ));
    for _ in 0..1000 {
        if load().await == (1, 1) {
            break;
        }
        poll_pause().await;
    }
    assert_eq!(
        load().await,
        (1, 1),
        "the second call is held while the first runs"
    );
    std::fs::write(gate.join("c0"), "").unwrap();
    let c0_result = stream.await.unwrap();
    assert!(
        c0_result.body.contains("event: complete"),
        "{}",
        c0_result.body
    );
    assert!(c0_result.body.contains("done c0"), "{}", c0_result.body);
    let b0 = b0.await.unwrap();
    assert_eq!(b0.status, 200, "{}", b0.body);
    let b0_id = b0.json()["event_id"].as_str().unwrap().to_string();
    std::fs::write(gate.join("b0"), "").unwrap();
    let b0_result = get_once(
        proxy.addr,
        zhang(),
        &format!("/gradio_api/call/job/{b0_id}"),
    )
    .await;
    assert!(b0_result.body.contains("done b0"), "{}", b0_result.body);
    assert_eq!(load().await, (0, 0));
}

/// With a group of servers, `slots` is per server and a client bound to a server (identity
/// affinity) waits for that server's slot, even while another server is idle: its Gradio
/// session lives on its own server.
#[tokio::test]
async fn a_bound_client_waits_for_its_own_servers_slot() {
    let (g1, g2) = (GpuBackend::start().await, GpuBackend::start().await);
    let toml = test_config_servers(
        &[
            format!("{{ url = \"http://{}\" }}", g1.addr),
            format!("{{ url = \"http://{}\" }}", g2.addr),
        ],
        "[upstream.health]\nenabled = false\n",
        &queue_config("slots = 1\nper_identity = 2"),
    );
    let proxy = Proxy::start_with(&toml).await;
    let admin = proxy.admin.unwrap();
    let arrived = || g1.arrived().len() + g2.arrived().len();
    let a0 = job(proxy.addr, alice(), "a0");
    poll(|| arrived() == 1, "the first job").await;
    let (mine, other) = if g1.arrived().len() == 1 {
        (&g1, &g2)
    } else {
        (&g2, &g1)
    };
    let a1 = job(proxy.addr, alice(), "a1");
    wait_waiting(admin, 1).await;
    assert!(
        other.arrived().is_empty(),
        "the job went to a server its client is not bound to"
    );
    mine.finish(2);
    assert_eq!(a0.await.unwrap().body, "done a0");
    assert_eq!(a1.await.unwrap().body, "done a1");
    assert_eq!(mine.arrived(), ["a0", "a1"]);
    assert!(other.arrived().is_empty());
    assert_eq!(mine.most.load(Ordering::SeqCst), 1);
}

/// A job with a body (an upload) waits like any other, its body unread, and reaches the backend
/// whole when its turn comes.
#[tokio::test]
async fn an_upload_waits_its_turn_and_arrives_whole() {
    let gpu = GpuBackend::start().await;
    let proxy = Proxy::start(gpu.addr, &queue_config("slots = 1")).await;
    let admin = proxy.admin.unwrap();
    let a0 = job(proxy.addr, alice(), "a0");
    gpu.wait_arrived(1).await;
    let photo = vec![b'p'; 300_000];
    let upload = tokio::spawn(async move {
        let mut send = h1(proxy.addr, zhang()).await;
        let req = Request::post("/api/run?job=b0")
            .header("host", "localhost")
            .body(full(photo))
            .unwrap();
        read(send.send_request(req).await.unwrap()).await
    });
    wait_waiting(admin, 1).await;
    assert_eq!(gpu.arrived(), ["a0"]);
    gpu.finish(2);
    assert_eq!(a0.await.unwrap().status, 200);
    let b0 = upload.await.unwrap();
    assert_eq!(b0.body, "done b0:300000");
    assert_eq!(gpu.arrived(), ["a0", "b0:300000"]);
}

/// A job whose backend cannot be reached ends with the 502 and frees its slot at once: the
/// next job is not held behind it.
#[tokio::test]
async fn a_backend_failure_frees_the_slot_with_the_502() {
    let proxy = Proxy::start(
        crate::common::backend::dead_addr().await,
        &queue_config("slots = 1"),
    )
    .await;
    let admin = proxy.admin.unwrap();
    for name in ["a0", "a1"] {
        let got = get_once(proxy.addr, alice(), &format!("/api/run?job={name}")).await;
        assert_eq!(got.status, 502, "{}", got.body);
    }
    let (_, usage) = admin_get(admin, "/usage").await;
    let usage: serde_json::Value = serde_json::from_str(&usage).unwrap();
    assert_eq!(usage["queues"][0]["busy"], 0, "{usage}");
    assert_eq!(usage["queues"][0]["people"][0]["jobs_done"], 2, "{usage}");
}

/// A person whose job's response they never read holds the slot only until `[limits]
/// send_timeout` cuts the connection; then the next person's job runs.
#[tokio::test]
async fn a_client_that_never_reads_frees_the_slot_after_send_timeout() {
    let gpu = GpuBackend::start().await;
    let proxy = Proxy::start(
        gpu.addr,
        &format!(
            "[limits]\nsend_timeout = \"500ms\"\n\n{}",
            queue_config("slots = 1")
        ),
    )
    .await;
    let admin = proxy.admin.unwrap();
    let mut tls = tls_connect(proxy.addr, alice()).await.unwrap();
    tls.write_all(b"GET /api/run?job=endless HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    gpu.wait_arrived(1).await;
    let b0 = job(proxy.addr, zhang(), "b0");
    wait_waiting(admin, 1).await;
    // The endless result starts; alice never reads it.
    gpu.finish(2);
    gpu.wait_arrived(2).await;
    assert_eq!(gpu.arrived(), ["endless", "b0"]);
    assert_eq!(b0.await.unwrap().body, "done b0");
    drop(tls);
}

/// `key = "subject"`: the people are the JWT's subjects, not the certificates, so two users of
/// one shared certificate get their own turns: one's second job waits while the other's runs
/// on the free slot.
#[tokio::test]
async fn key_subject_counts_turns_by_the_tokens_subject() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    const SECRET: &str = "0123456789abcdef0123456789abcdef-queue-secret";
    let dir = scratch_dir("queue-subject");
    std::fs::write(dir.join("jwt.secret"), SECRET).unwrap();
    let gpu = GpuBackend::start().await;
    let proxy = Proxy::start(
        gpu.addr,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[jwt]\nalgorithms = [\"HS256\"]\nsecret_file = \"{}\"\n\n\
             [[queue]]\nname = \"gpu\"\nslots = 2\nkey = \"subject\"\n\n\
             [[route]]\npath = \"/api\"\naction = \"allow\"\nauth = \"jwt\"\nqueue = \"gpu\"\n",
            dir.join("jwt.secret").display()
        ),
    )
    .await;
    let admin = proxy.admin.unwrap();
    let token = |sub: &str| {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": sub, "exp": exp}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let as_user = |sub: &str, name: &str| {
        let bearer = format!("Bearer {}", token(sub));
        let path = format!("/api/run?job={name}");
        tokio::spawn(async move {
            let mut send = h1(proxy.addr, alice()).await;
            get1(&mut send, &path, &[("authorization", &bearer)]).await
        })
    };
    let u0 = as_user("ursula", "u0");
    gpu.wait_arrived(1).await;
    let u1 = as_user("ursula", "u1");
    wait_waiting(admin, 1).await;
    // Same certificate, another user: the free slot is hers.
    let v0 = as_user("vera", "v0");
    gpu.wait_arrived(2).await;
    assert_eq!(gpu.arrived(), ["u0", "v0"]);
    assert_eq!(waiting(admin).await, 1);
    gpu.finish(3);
    for (j, name) in [(u0, "u0"), (u1, "u1"), (v0, "v0")] {
        assert_eq!(j.await.unwrap().body, format!("done {name}"));
    }
    let (_, usage) = admin_get(admin, "/usage").await;
    let usage: serde_json::Value = serde_json::from_str(&usage).unwrap();
    let keys: Vec<&str> = usage["queues"][0]["people"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert!(
        keys.contains(&"subject:ursula") && keys.contains(&"subject:vera"),
        "{usage}"
    );
}
