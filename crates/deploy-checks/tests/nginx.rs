//! nginx/banter.conf and nginx/banter-tls.conf pass `nginx -t` as the
//! process cluster renders them (scripts/cluster.sh changes only the listen
//! port and the read timeout), with the directives a WebSocket proxy needs.
//! The tools are the Debian packages `nginx` and `openssl`; a missing one
//! fails the test, never a skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use banter_testkit::deploy::Cluster;
use banter_testkit::{repo_root, run_ok, tool};
use std::path::Path;
use std::process::Command;

#[test]
fn nginx_config_is_valid_and_is_the_repository_file() {
    let nginx = tool("nginx", "nginx");
    let c = Cluster::new("nginx-t", &[("NGINX_READ_TIMEOUT", "7s")]);
    c.sh(&["render"]);
    let conf = c.dir.join("nginx/nginx.conf");
    let check = |conf: &Path| {
        run_ok(
            Command::new(&nginx)
                .arg("-t")
                .arg("-p")
                .arg(c.dir.join("nginx"))
                .arg("-c")
                .arg(conf)
                .arg("-e")
                .arg(c.dir.join("logs/nginx-t.log")),
        );
    };
    check(&conf);

    // The process cluster runs nginx/banter.conf itself: only the listen port
    // and the read timeout differ.
    let ours = std::fs::read_to_string(repo_root().join("nginx/banter.conf")).unwrap();
    let rendered = c.file("nginx/banter.conf");
    let changed: Vec<_> = ours
        .lines()
        .zip(rendered.lines())
        .filter(|(a, b)| a != b)
        .map(|(_, b)| b.trim().to_owned())
        .collect();
    assert_eq!(ours.lines().count(), rendered.lines().count());
    assert_eq!(
        changed,
        [
            format!("listen {};", c.nginx),
            "proxy_read_timeout 7s;".into()
        ]
    );
    for directive in [
        "map $http_upgrade $connection_upgrade",
        "least_conn;",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header Host $http_host;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_next_upstream error timeout http_502 http_503;",
        "location = /metrics",
    ] {
        assert!(
            ours.contains(directive),
            "nginx/banter.conf lacks {directive}"
        );
    }
    let upstream = c.file("nginx/banter-upstream.conf");
    assert_eq!(upstream.matches("max_fails=1 fail_timeout=5s;").count(), 3);

    // The TLS server block, next to it, with a self-signed certificate.
    let openssl = tool("openssl", "openssl");
    let tls = c.dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    run_ok(
        Command::new(openssl)
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(tls.join("privkey.pem"))
            .arg("-out")
            .arg(tls.join("fullchain.pem")),
    );
    let tls_conf = std::fs::read_to_string(repo_root().join("nginx/banter-tls.conf"))
        .unwrap()
        .replace("/etc/banter/tls", &tls.display().to_string());
    std::fs::write(c.dir.join("nginx/banter-tls.conf"), tls_conf).unwrap();
    let with_tls = c.file("nginx/nginx.conf").replace(
        "include banter.conf;",
        "include banter.conf;\n    include banter-tls.conf;",
    );
    let tls_main = c.dir.join("nginx/nginx-tls.conf");
    std::fs::write(&tls_main, with_tls).unwrap();
    check(&tls_main);
}
