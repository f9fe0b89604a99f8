//! Several backends for one app (spec §11): identity affinity keeps each client on its server,
//! a killed server's clients move and nobody else does, a refused connection fails over before
//! any byte was sent, a drained server keeps its clients, a reload moves nobody, and a group
//! with no healthy server answers 503 at once. Real backends on loopback ports, killed and
//! restarted for real.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::common::*;

const LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Sixteen client identities: enough that, with two servers, both get clients (all on one
/// would take odds of 1 in 32,768).
fn clients() -> Vec<Arc<rustls::ClientConfig>> {
    (0..16)
        .map(|i| {
            let id = custom_client(|p| {
                p.distinguished_name
                    .push(rcgen::DnType::CommonName, format!("gpu-user-{i}"));
            });
            client_config(Some(&id), &[])
        })
        .collect()
}

/// A config whose default group is `servers` (TOML list items), with `group_extra` inside
/// `[upstream]` and `extra` after it.
fn group_config(servers: &[String], group_extra: &str, extra: &str) -> String {
    test_config_servers(servers, group_extra, extra)
}

fn server(addr: SocketAddr) -> String {
    format!("{{ url = \"http://{addr}\" }}")
}

/// Requests a backend saw from clients (not certgate's health checks).
fn served(b: &Backend) -> usize {
    b.seen()
        .iter()
        .filter(|s| {
            s.headers
                .get("user-agent")
                .is_none_or(|u| u != "certgate-health-check")
        })
        .count()
}

/// Which backend answered: the one whose client requests grew by one.
async fn who(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    path: &str,
    backends: &[&Backend],
) -> usize {
    let before: Vec<usize> = backends.iter().map(|b| served(b)).collect();
    let got = get_once(addr, cfg, path).await;
    assert_eq!(got.status, 200, "{path}: {}", got.body);
    let after: Vec<usize> = backends.iter().map(|b| served(b)).collect();
    let changed: Vec<usize> = (0..backends.len())
        .filter(|&i| after[i] != before[i])
        .collect();
    assert_eq!(changed.len(), 1, "{path} reached {changed:?}");
    changed[0]
}

/// `balance = "identity"`: each client's requests all reach one server, the clients are spread
/// over both, and a second certgate with the same config (a replica) sends every client to
/// the same server with no state shared.
#[tokio::test]
async fn identity_keeps_each_client_on_one_server_and_replicas_agree() {
    let a = Backend::start().await;
    let b = Backend::start().await;
    let toml = group_config(
        &[server(a.addr), server(b.addr)],
        "",
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
    );
    let proxy = Proxy::start_with(&toml).await;
    let replica = Proxy::start_with(&toml).await;
    let mut placed = HashMap::new();
    for (i, c) in clients().into_iter().enumerate() {
        let first = who(proxy.addr, c.clone(), "/queue/join", &[&a, &b]).await;
        for path in ["/queue/data", "/upload", "/file=out.png"] {
            assert_eq!(
                who(proxy.addr, c.clone(), path, &[&a, &b]).await,
                first,
                "client {i} moved"
            );
        }
        assert_eq!(
            who(replica.addr, c, "/queue/data", &[&a, &b]).await,
            first,
            "the replica placed client {i} elsewhere"
        );
        placed.insert(i, first);
    }
    let on_a = placed.values().filter(|&&s| s == 0).count();
    assert!(
        on_a > 0 && on_a < 16,
        "all clients on one server: {on_a} of 16 on a"
    );
    // What an operator draining a server watches: bound clients per server.
    let (_, text) = admin_get(proxy.admin.unwrap(), "/metrics").await;
    let value = |server: SocketAddr, metric: &str| -> f64 {
        let series = format!(
            "certgate_upstream_server_{metric}{{upstream=\"default\",server=\"http://{server}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series} in {text}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(value(a.addr, "bound_clients"), on_a as f64);
    assert_eq!(value(b.addr, "bound_clients"), (16 - on_a) as f64);
    assert_eq!(value(a.addr, "healthy") + value(b.addr, "healthy"), 2.0);
    assert_eq!(value(a.addr, "in_flight"), 0.0);
    assert_eq!(value(a.addr, "requests_total"), (on_a * 4) as f64);
}

/// Killing a server moves its clients (to their next server) and nobody else; when it comes
/// back, nobody moves back (they are bound where they are now). A GET in flight to the dead
/// server's pooled connection fails over too.
#[tokio::test]
async fn a_killed_server_moves_only_its_clients_and_its_return_moves_nobody() {
    let (logs, _guard) = LogCapture::start();
    let a = Backend::start().await;
    let b = Backend::start().await;
    let c = Backend::start().await;
    let toml = group_config(
        &[server(a.addr), server(b.addr), server(c.addr)],
        // Only the active checks decide here, so the test can wait for what they see.
        "max_fails = 0\n[upstream.health]\ninterval = \"50ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n",
        "",
    );
    let proxy = Proxy::start_with(&toml).await;
    let clients = clients();
    let mut backends = [a, b, c];
    let mut before = Vec::new();
    for cl in &clients {
        before.push(
            who(
                proxy.addr,
                cl.clone(),
                "/join",
                &backends.iter().collect::<Vec<_>>(),
            )
            .await,
        );
    }
    // The server with the most clients is the one that dies (it has at least six of sixteen).
    let victim = (0..3)
        .max_by_key(|s| before.iter().filter(|&&b| b == *s).count())
        .unwrap();
    let victim_addr = backends[victim].addr;
    backends[victim].stop().await;
    logs.wait_for(&["upstream server is down", &victim_addr.to_string()])
        .await;
    let mut after = Vec::new();
    for (i, cl) in clients.iter().enumerate() {
        let now = who(
            proxy.addr,
            cl.clone(),
            "/data",
            &backends.iter().collect::<Vec<_>>(),
        )
        .await;
        if before[i] == victim {
            assert_ne!(now, victim, "client {i} of the dead server did not move");
        } else {
            assert_eq!(now, before[i], "client {i} of a surviving server moved");
        }
        after.push(now);
    }
    // It comes back on its port and its health check sees it; nobody moves back, nobody else
    // moves, and new clients do reach it.
    backends[victim] = Backend::start_on(victim_addr).await;
    logs.wait_for(&["upstream server is up again", &victim_addr.to_string()])
        .await;
    let all: Vec<&Backend> = backends.iter().collect();
    for (i, cl) in clients.iter().enumerate() {
        assert_eq!(
            who(proxy.addr, cl.clone(), "/data", &all).await,
            after[i],
            "client {i} moved when the server came back"
        );
    }
    // A new client lands on it with odds of a third each: 32 of them all missing it would take
    // odds of 1 in 400,000.
    let mut fresh = Vec::new();
    for _ in 0..32 {
        let id = custom_client(|p| {
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "newcomer");
        });
        fresh.push(who(proxy.addr, client_config(Some(&id), &[]), "/join", &all).await);
    }
    assert!(
        fresh.contains(&victim),
        "no new client reached the returned server: {fresh:?}"
    );
}

/// A refused connection goes to the next server before any byte of the request was sent, so
/// even a POST with a body is served, whole; a request the backend broke after it was sent is
/// not replayed elsewhere (502).
#[tokio::test]
async fn refused_connections_fail_over_but_sent_requests_are_not_replayed() {
    let live = Backend::start().await;
    let dead = backend::dead_addr().await;
    // round_robin starts at the first server: the dead one.
    let toml = group_config(
        &[server(dead), server(live.addr)],
        "balance = \"round_robin\"\n[upstream.health]\nenabled = false\n",
        "",
    );
    let proxy = Proxy::start_with(&toml).await;
    let body = vec![7u8; 1 << 20];
    let mut send = h1(proxy.addr, alice()).await;
    let req = http::Request::post("/upload")
        .header("host", "localhost")
        .body(full(body.clone()))
        .unwrap();
    let got = read(send.send_request(req).await.unwrap()).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(
        live.uploaded(),
        body.len(),
        "the body reached the live server whole"
    );

    let garbage = backend::raw_backend(b"this is not HTTP\r\n\r\n").await;
    let other = Backend::start().await;
    let toml = group_config(
        &[server(garbage), server(other.addr)],
        "balance = \"round_robin\"\n[upstream.health]\nenabled = false\n",
        "",
    );
    let proxy = Proxy::start_with(&toml).await;
    let mut send = h1(proxy.addr, alice()).await;
    let req = http::Request::post("/colorize")
        .header("host", "localhost")
        .body(full("image"))
        .unwrap();
    let got = read(send.send_request(req).await.unwrap()).await;
    assert_eq!(got.status, 502, "{}", got.body);
    assert_eq!(
        served(&other),
        0,
        "the sent POST was replayed: {:?}",
        other.seen()
    );
}

/// The keep-alive retry is the only second send a request gets once its bytes went out: a
/// `DELETE` sent on a pooled connection that the server then breaks, and whose one retry finds
/// the server refusing connections, is answered 502; it does not fail over to the next server
/// as if nothing had been sent (spec: failover only before any byte of the request was sent).
#[tokio::test]
async fn a_retried_request_does_not_fail_over_to_the_next_server() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let first = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    // One connection: the first request is answered and the connection kept; the listener is
    // gone from then on (new connections refused); the second request is read and the
    // connection closed without an answer.
    tokio::spawn(async move {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        drop(listener);
        let mut buf = vec![0u8; 8192];
        for answer in [true, false] {
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&got);
            record
                .lock()
                .unwrap()
                .push(head.lines().next().unwrap_or_default().to_string());
            if answer {
                tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
            }
        }
    });
    let other = Backend::start().await;
    // round_robin: the GET to the first server, the next GET to the other, the DELETE to the
    // first again, on the connection the first GET left in the pool.
    let toml = group_config(
        &[server(first), server(other.addr)],
        "balance = \"round_robin\"\n[upstream.health]\nenabled = false\n",
        "",
    );
    let proxy = Proxy::start_with(&toml).await;
    let mut send = h1(proxy.addr, alice()).await;
    for _ in 0..2 {
        assert_eq!(get1(&mut send, "/", &[]).await.status, 200);
    }
    let req = http::Request::delete("/items/1")
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    let got = read(send.send_request(req).await.unwrap()).await;
    assert_eq!(got.status, 502, "{}", got.body);
    assert_eq!(
        *seen.lock().unwrap(),
        ["GET / HTTP/1.1", "DELETE /items/1 HTTP/1.1"]
    );
    let targets: Vec<String> = other.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/"], "the DELETE reached a second server");
}

/// No server left: 503 `no_healthy_backend` JSON with Retry-After at once, never a hang, and
/// `/readyz` says which group has none.
#[tokio::test]
async fn no_healthy_server_is_503_with_retry_after_and_not_ready() {
    let toml = group_config(
        &[
            server(backend::dead_addr().await),
            server(backend::dead_addr().await),
        ],
        "max_fails = 1\nfail_timeout = \"60s\"\n[upstream.health]\nenabled = false\n",
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
    );
    let proxy = Proxy::start_with(&toml).await;
    // The first request tries both and finds them refusing.
    let got = get_once(proxy.addr, alice(), "/").await;
    assert_eq!(got.status, 502, "{}", got.body);
    let got = tokio::time::timeout(LIMIT, get_once(proxy.addr, alice(), "/"))
        .await
        .expect("a hang");
    assert_eq!(got.status, 503, "{}", got.body);
    assert_eq!(got.json()["error"], "no_healthy_backend");
    assert!(got.headers.contains_key("retry-after"));
    let (status, text) = admin_get(proxy.admin.unwrap(), "/readyz").await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("\"default\" has no healthy server"), "{text}");
}

/// A hanging server (accepts, never answers) gets the request's 504, and then is down: the
/// next requests go to the other server at once.
#[tokio::test]
async fn a_hanging_server_is_taken_out_by_its_timeouts() {
    let a = Backend::start().await;
    let b = Backend::start().await;
    let toml = group_config(
        &[server(a.addr), server(b.addr)],
        "balance = \"round_robin\"\nresponse_timeout = \"300ms\"\nmax_fails = 1\nfail_timeout = \"60s\"\n[upstream.health]\nenabled = false\n",
        "",
    );
    let proxy = Proxy::start_with(&toml).await;
    // round_robin: the first request goes to a, which never answers /never.
    let got = get_once(proxy.addr, alice(), "/never").await;
    assert_eq!(got.status, 504, "{}", got.body);
    for _ in 0..4 {
        assert_eq!(who(proxy.addr, alice(), "/ok", &[&a, &b]).await, 1);
    }
}

/// Active checks: a server whose health path answers 500 is marked down after `fall` checks
/// (logged once, with the reason) and gets no requests.
#[tokio::test]
async fn active_health_checks_take_a_failing_server_out() {
    let (logs, _guard) = LogCapture::start();
    let sick =
        backend::raw_backend(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
            .await;
    let well = Backend::start().await;
    let toml = group_config(
        &[server(sick), server(well.addr)],
        "[upstream.health]\npath = \"/healthz\"\ninterval = \"50ms\"\ntimeout = \"1s\"\nfall = 2\nrise = 2\n",
        "",
    );
    let proxy = Proxy::start_with(&toml).await;
    let line = logs
        .wait_for(&["upstream server is down", &sick.to_string()])
        .await;
    assert!(line.contains("500"), "{line}");
    for c in clients() {
        assert_eq!(who(proxy.addr, c, "/", &[&well]).await, 0);
    }
    assert!(
        well.seen().iter().any(|s| s.target == "/healthz"),
        "the well server was checked too"
    );
}

/// Drain: after a reload with `drain = true`, a server keeps the clients bound to it and gets
/// no new ones. A reload that adds a server moves nobody who is bound.
#[tokio::test]
async fn drain_keeps_bound_clients_and_reload_moves_nobody() {
    let a = Backend::start().await;
    let b = Backend::start().await;
    let c = Backend::start().await;
    let path = own_config("groups-drain", a.addr, "", "");
    let write = |servers: &[String]| {
        std::fs::write(
            &path,
            group_config(servers, "[upstream.health]\nenabled = false\n", ""),
        )
        .unwrap();
    };
    write(&[server(a.addr), server(b.addr)]);
    let proxy = Proxy::start_file(&path).await;
    let all = clients();
    let (old, new) = all.split_at(8);
    let mut placed = Vec::new();
    for cl in old {
        placed.push(who(proxy.addr, cl.clone(), "/", &[&a, &b, &c]).await);
    }
    // a drains, c joins.
    write(&[
        format!("{{ url = \"http://{}\", drain = true }}", a.addr),
        server(b.addr),
        server(c.addr),
    ]);
    proxy.shared.reload("test").await.expect("reload");
    for (i, cl) in old.iter().enumerate() {
        assert_eq!(
            who(proxy.addr, cl.clone(), "/", &[&a, &b, &c]).await,
            placed[i],
            "bound client {i} moved"
        );
    }
    for cl in new {
        assert_ne!(
            who(proxy.addr, cl.clone(), "/", &[&a, &b, &c]).await,
            0,
            "a draining server got a new client"
        );
    }
}

/// `/readyz` means a new client would be served: with one server of the group down and the
/// only healthy one draining, a client bound to the draining server is still served, every
/// new client gets 503, and `/readyz` is 503 naming the group.
#[tokio::test]
async fn readyz_is_not_ready_when_the_only_healthy_server_drains() {
    let dead = backend::dead_addr().await;
    let b = Backend::start().await;
    let path = own_config("groups-ready-drain", b.addr, "", "");
    let write = |servers: &[String]| {
        std::fs::write(
            &path,
            group_config(
                servers,
                "max_fails = 1\nfail_timeout = \"60s\"\n[upstream.health]\nenabled = false\n",
                "[admin]\nlisten = \"127.0.0.1:0\"\n",
            ),
        )
        .unwrap();
    };
    write(&[server(dead), server(b.addr)]);
    let proxy = Proxy::start_file(&path).await;
    let admin = proxy.admin.unwrap();
    // Whichever order alice's rendezvous gives, she ends up bound to b (a refused connection
    // fails over before any byte was sent).
    assert_eq!(who(proxy.addr, alice(), "/", &[&b]).await, 0);
    assert_eq!(admin_get(admin, "/readyz").await.0, 200);
    write(&[
        server(dead),
        format!("{{ url = \"http://{}\", drain = true }}", b.addr),
    ]);
    proxy.shared.reload("test").await.expect("reload");
    assert_eq!(who(proxy.addr, alice(), "/", &[&b]).await, 0);
    // A new client: the dead server, if not yet marked down, refuses (502); then 503.
    let newcomer = clients().swap_remove(0);
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(
            get_once(proxy.addr, newcomer.clone(), "/")
                .await
                .status
                .as_u16(),
        );
    }
    assert!(matches!(statuses[..], [502 | 503, 503]), "{statuses:?}");
    let (status, text) = admin_get(admin, "/readyz").await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("\"default\""), "{text}");
    assert!(text.contains("draining"), "{text}");
    assert_eq!(served(&b), 2);
}

/// Named groups: a route's `upstream` sends it to its group; everything else to `[upstream]`.
#[tokio::test]
async fn routes_choose_their_group() {
    let ui = Backend::start().await;
    let w1 = Backend::start().await;
    let w2 = Backend::start().await;
    let toml = test_config_servers(
        &[server(ui.addr)],
        "",
        &format!(
            "[upstreams.colorize]\nservers = [{}, {}]\nbalance = \"least_requests\"\n\n[[route]]\npath = \"/api/colorize\"\naction = \"allow\"\nupstream = \"colorize\"\n",
            server(w1.addr),
            server(w2.addr)
        ),
    );
    let proxy = Proxy::start_with(&toml).await;
    assert_eq!(who(proxy.addr, alice(), "/", &[&ui, &w1, &w2]).await, 0);
    for _ in 0..4 {
        assert_ne!(
            who(proxy.addr, alice(), "/api/colorize", &[&ui, &w1, &w2]).await,
            0
        );
    }
}

/// Bad groups are refused by the config loader with the key: an unknown group in a route, an
/// empty `servers`, a bad URL, a zero weight, a server listed twice, url and servers together.
#[test]
fn bad_groups_name_their_key() {
    let pki = test_pki();
    let x = "{ url = \"http://127.0.0.1:9\" }";
    for (upstream, extra, key) in [
        (
            format!("servers = [{x}]"),
            "[[route]]\npath = \"/a\"\naction = \"allow\"\nupstream = \"nope\"\n",
            "route[0].upstream",
        ),
        ("servers = []".to_string(), "", "upstream.servers"),
        (
            "servers = [{ url = \"https://x:1\" }]".to_string(),
            "",
            "upstream.servers[0].url",
        ),
        (
            "servers = [{ url = \"http://127.0.0.1:9\", weight = 0 }]".to_string(),
            "",
            "upstream.servers[0].weight",
        ),
        (
            format!("servers = [{x}, {x}]"),
            "",
            "upstream.servers[1].url",
        ),
        (
            format!("url = \"http://127.0.0.1:9\"\nservers = [{x}]"),
            "",
            "upstream.servers",
        ),
        (
            format!("servers = [{x}]\nbalance = \"random\""),
            "",
            "upstream.balance",
        ),
    ] {
        let toml = format!(
            "[listen]\nhttps = \"127.0.0.1:0\"\n[tls]\ncert = \"server.crt\"\nkey = \"server.key\"\nclient_ca = \"ca-bundle.crt\"\n[upstream]\n{upstream}\n{extra}"
        );
        let err = certgate::config::Config::from_str(&toml, &pki.dir.join("certgate.toml"))
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{toml}"))
            .to_string();
        assert!(err.contains(key), "{key} not in: {err}");
    }
}

/// The shipped two-GPU example loads, with its groups and queues as documented.
#[test]
fn shipped_gpu_example_loads() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/gradio-gpus.toml"
    ))
    .unwrap();
    let config = certgate::config::Config::from_str(&text, &test_pki().dir.join("certgate.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.upstream.servers.len(), 2);
    assert_eq!(config.upstream.servers[1].weight, 2);
    assert_eq!(config.upstreams.len(), 1);
    assert_eq!(config.upstreams[0].name, "colorize");
    assert_eq!(
        config.upstreams[0].health.as_ref().unwrap().path.as_str(),
        "/health"
    );
    // certgate check prints every group, its servers and its checks.
    let summary = certgate::cli::commands::summary(&config);
    for want in [
        "[upstream]",
        "http://10.0.0.12:7860  weight 2",
        "balance              = identity",
        "health               = GET / every 5s, timeout 2s, rise 2, fall 3",
        "[upstreams.colorize]",
        "balance              = least_requests",
        "upstream colorize, queue colorize",
        "[[queue]] ui: 1 slot(s) per server",
        "protocol \"gradio\"",
    ] {
        assert!(summary.contains(want), "{want:?} not in:\n{summary}");
    }
}

/// After `strip_prefix`, the deny rules that re-check the forwarded path are those of the
/// target group and those naming no group: `/internal` denied for the `other` group does not
/// refuse `/api/internal` that goes to the workers as `/internal`, while a deny rule naming the
/// workers' group does, and so does one naming no group (it may mean every backend's path).
#[tokio::test]
async fn strip_prefix_recheck_counts_deny_rules_of_the_same_group() {
    let ui = Backend::start().await;
    let worker = Backend::start().await;
    let other = Backend::start().await;
    let toml = test_config_servers(
        &[server(ui.addr)],
        "",
        &format!(
            "[upstreams.workers]\nservers = [{}]\n\n[upstreams.other]\nservers = [{}]\n\n[[route]]\npath = \"/internal\"\naction = \"deny\"\nupstream = \"other\"\n\n[[route]]\npath = \"/secret\"\naction = \"deny\"\nupstream = \"workers\"\n\n[[route]]\npath = \"/everywhere\"\naction = \"deny\"\n\n[[route]]\npath = \"/api\"\naction = \"allow\"\nstrip_prefix = \"/api\"\nupstream = \"workers\"\n",
            server(worker.addr),
            server(other.addr)
        ),
    );
    let proxy = Proxy::start_with(&toml).await;
    assert_eq!(
        who(
            proxy.addr,
            alice(),
            "/api/internal",
            &[&ui, &worker, &other]
        )
        .await,
        1
    );
    assert_eq!(worker.seen()[0].target, "/internal");
    for path in ["/api/secret", "/api/everywhere/x"] {
        let got = get_once(proxy.addr, alice(), path).await;
        assert_eq!(got.status, 403, "{path}: {}", got.body);
        assert!(got.body.contains("after strip_prefix"), "{}", got.body);
    }
    assert_eq!(get_once(proxy.addr, alice(), "/internal").await.status, 403);
    assert_eq!(served(&worker), 1);
}

/// The re-check after `strip_prefix` counts every deny rule, not the first that matches: with
/// `/internal` denied for another group first and for the default group after it, and `/api`
/// stripped to the default group, `/api/internal/secret` is refused like `/internal/secret`
/// and never reaches the default backend.
#[tokio::test]
async fn strip_prefix_recheck_is_not_hidden_by_another_groups_deny() {
    let ui = Backend::start().await;
    let other = Backend::start().await;
    let toml = test_config_servers(
        &[server(ui.addr)],
        "",
        &format!(
            "[upstreams.other]\nservers = [{}]\n\n[[route]]\npath = \"/internal\"\naction = \"deny\"\nupstream = \"other\"\n\n[[route]]\npath = \"/internal\"\naction = \"deny\"\n\n[[route]]\npath = \"/api\"\naction = \"allow\"\nstrip_prefix = \"/api\"\n",
            server(other.addr)
        ),
    );
    let proxy = Proxy::start_with(&toml).await;
    assert_eq!(
        get_once(proxy.addr, alice(), "/internal/secret")
            .await
            .status,
        403
    );
    for path in ["/api/internal/secret", "/api/INTERNAL;x/secret"] {
        let got = get_once(proxy.addr, alice(), path).await;
        assert_eq!(got.status, 403, "{path}: {}", got.body);
        assert!(got.body.contains("after strip_prefix"), "{}", got.body);
    }
    assert_eq!(served(&ui), 0, "{:#?}", ui.seen());
    assert_eq!(
        who(proxy.addr, alice(), "/api/colorize", &[&ui, &other]).await,
        0
    );
    assert_eq!(ui.seen().last().unwrap().target, "/colorize");
}
