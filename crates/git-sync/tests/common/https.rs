//! A real HTTPS git server: `git http-backend` run by fcgiwrap behind nginx with TLS (a
//! certificate from a private CA made at test time; client certificates, basic auth or a
//! bearer token when asked), and tinyproxy as the HTTP proxy. All on 127.0.0.1, killed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use test_support::certs::{Ca, CertFiles};
use test_support::ports::{free_port, loopback};
use test_support::process::Process;
use test_support::skip::require_program;

use super::git;

/// What the server asks of its clients.
#[derive(Default)]
pub struct NginxOptions<'a> {
    /// Require a client certificate issued by this CA (PEM file).
    pub client_ca: Option<&'a Path>,
    /// Basic auth: (user, password).
    pub basic: Option<(&'a str, &'a str)>,
    /// Require `Authorization: Bearer <token>`.
    pub bearer: Option<&'a str>,
    /// Answer `/old.git/...` with a 301 to `/cfg.git/...` (a moved repository).
    pub redirect_old: bool,
}

pub struct NginxGit {
    pub port: u16,
    /// The CA that issued the server's certificate: what `--ca-file` gets.
    pub ca_file: PathBuf,
    pub dir: tempfile::TempDir,
    _fcgiwrap: Process,
    nginx: Process,
}

impl NginxGit {
    /// Serves the bare repositories under `base`.
    pub fn start(base: &Path, options: NginxOptions<'_>) -> NginxGit {
        require_program("nginx", "nginx");
        require_program("fcgiwrap", "fcgiwrap");
        let backend = PathBuf::from(git(base, &["--exec-path"])).join("git-http-backend");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = Ca::new("test git server CA");
        let ca_file = ca.write(&d.join("server-ca.crt"));
        let server: CertFiles = ca
            .leaf()
            .ip("127.0.0.1".parse().unwrap())
            .dns("localhost")
            .sign()
            .write(d, "server");
        let socket = d.join("fcgiwrap.sock");
        let mut cmd = Command::new("fcgiwrap");
        cmd.args(["-c", "4", "-s"])
            .arg(format!("unix:{}", socket.display()));
        let fcgiwrap = Process::spawn("fcgiwrap", cmd);
        super::wait::until(Duration::from_secs(10), "fcgiwrap's socket", || {
            socket.exists()
        });
        let mut access = String::new();
        if let Some((user, password)) = options.basic {
            std::fs::write(d.join("htpasswd"), format!("{user}:{{PLAIN}}{password}\n")).unwrap();
            access.push_str(&format!(
                "auth_basic \"git\"; auth_basic_user_file {}/htpasswd;\n",
                d.display()
            ));
        }
        if let Some(token) = options.bearer {
            access.push_str(&format!(
                "if ($http_authorization != \"Bearer {token}\") {{ return 401; }}\n"
            ));
        }
        let client_auth = options
            .client_ca
            .map(|ca| {
                format!(
                    "ssl_client_certificate {}; ssl_verify_client on;",
                    ca.display()
                )
            })
            .unwrap_or_default();
        for _ in 0..5 {
            let port = free_port();
            let redirect = if options.redirect_old {
                format!(
                    "location ~ ^/old\\.git(/.*)$ {{ return 301 https://127.0.0.1:{port}/cfg.git$1$is_args$args; }}"
                )
            } else {
                String::new()
            };
            let conf = format!(
                r#"daemon off;
master_process off;
user root root;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body;
  fastcgi_temp_path {d}/fastcgi;
  proxy_temp_path {d}/proxy;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    {client_auth}
    client_max_body_size 0;
    {redirect}
    location / {{
      {access}
      fastcgi_pass unix:{socket};
      fastcgi_param SCRIPT_FILENAME {backend};
      fastcgi_param GIT_PROJECT_ROOT {base};
      fastcgi_param GIT_HTTP_EXPORT_ALL 1;
      fastcgi_param PATH_INFO $uri;
      fastcgi_param QUERY_STRING $query_string;
      fastcgi_param REQUEST_METHOD $request_method;
      fastcgi_param CONTENT_TYPE $content_type;
      fastcgi_param CONTENT_LENGTH $content_length;
      fastcgi_param HTTP_CONTENT_ENCODING $http_content_encoding;
      fastcgi_param HTTP_GIT_PROTOCOL $http_git_protocol;
      fastcgi_param REMOTE_USER $remote_user;
      fastcgi_param REMOTE_ADDR $remote_addr;
      fastcgi_param SERVER_PROTOCOL $server_protocol;
      fastcgi_param GATEWAY_INTERFACE CGI/1.1;
    }}
  }}
}}
"#,
                d = d.display(),
                cert = server.cert.display(),
                key = server.key.display(),
                socket = socket.display(),
                backend = backend.display(),
                base = base.display(),
            );
            let conf_path = d.join("nginx.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let mut cmd = Command::new("nginx");
            cmd.arg("-p")
                .arg(d)
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(d.join("error.log"));
            let mut nginx = Process::spawn("nginx", cmd);
            match nginx.try_wait_listening(loopback(port), Duration::from_secs(10)) {
                Ok(()) => {
                    return NginxGit {
                        port,
                        ca_file,
                        dir,
                        _fcgiwrap: fcgiwrap,
                        nginx,
                    };
                }
                Err(e) => eprintln!("nginx on port {port}: {e}; retrying"),
            }
        }
        panic!("nginx did not start");
    }

    pub fn url(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/{name}", self.port)
    }

    /// nginx's access log: one line per request.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        format!(
            "{}\n{}",
            self.nginx.log(),
            std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
        )
    }
}

#[allow(unused_imports)] // not every test binary that includes common/ proxies
pub use test_support::tinyproxy::Tinyproxy;
