//! End-to-end: the web dashboard in Debian's headless Chromium, driven through chromedriver
//! (WebDriver). A user signs in, sees a function's charts after traffic, watches a log line
//! arrive live, rolls back a revision, re-drives a dead letter, downloads the usage CSV and
//! compares it with the CLI's, and signs out. Every page is checked for JavaScript console
//! errors, for scripts a function's output could smuggle in, and for accessibility (axe-core,
//! vendored for this test); a screenshot of each is written to
//! `target/tmp/dashboard-screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use gust_harness::reqwest::{self, Method};
use gust_harness::{Gust, GustOptions, eventually, free_port};
use serde_json::{Value, json};

const GUST: &str = env!("CARGO_BIN_EXE_gust");
const AXE: &str = include_str!("dashboard/axe.min.js");
/// What a hostile function prints and answers: markup that would run if it were not escaped.
const PROBE_SCRIPT: &str = "<script>window.__xss=1</script>";
const PROBE_ATTRIBUTE: &str = "\"><img src=x onerror=\"window.__xss=2\">";

fn probe_function() -> String {
    format!(
        "import sys\n\ndef main():\n    print({PROBE_SCRIPT:?}, flush=True)\n    print({PROBE_ATTRIBUTE:?}, flush=True)\n    return {:?}\n",
        format!("{PROBE_SCRIPT}{PROBE_ATTRIBUTE}")
    )
}

/// Headless Chromium under chromedriver, with a runtime for fantoccini's async calls.
struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    downloads: tempfile::TempDir,
    screenshots: PathBuf,
    base: String,
}

/// chromedriver's browser log (the JavaScript console), which WebDriver itself has no
/// command for.
#[derive(Debug)]
struct ConsoleLog;

impl WebDriverCompatibleCommand for ConsoleLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

impl Browser {
    fn start(base: String) -> Self {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (scripts/setup.sh installs chromium-driver)");
        let profile = tempfile::tempdir().unwrap();
        let downloads = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:loggingPrefs": { "browser": "ALL" },
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
                "prefs": {
                    "download.default_directory": downloads.path(),
                    "download.prompt_for_download": false,
                },
            },
        });
        let capabilities = capabilities.as_object().unwrap().clone();
        let url = format!("http://127.0.0.1:{port}");
        let client = runtime.block_on(async {
            let mut last = None;
            for _ in 0..100 {
                match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities.clone())
                    .connect(&url)
                    .await
                {
                    Ok(client) => return client,
                    Err(error) => last = Some(error),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("chromedriver did not start a session: {last:?}");
        });
        let screenshots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
        std::fs::create_dir_all(&screenshots).unwrap();
        Self {
            runtime,
            client,
            driver,
            _profile: profile,
            downloads,
            screenshots,
            base,
        }
    }

    fn goto(&self, path: &str) {
        self.goto_url(&format!("{}{path}", self.base));
    }

    fn goto_url(&self, url: &str) {
        self.runtime.block_on(self.client.goto(url)).unwrap();
    }

    fn path(&self) -> String {
        let url = self.runtime.block_on(self.client.current_url()).unwrap();
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        }
    }

    fn script(&self, script: &str, args: Vec<Value>) -> Value {
        self.runtime
            .block_on(self.client.execute(script, args))
            .unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    /// The text of the first element `css` finds, waiting up to 10 s for it to contain
    /// `needle`.
    fn wait_text(&self, css: &str, needle: &str) -> String {
        eventually(Duration::from_secs(10), || {
            let text = self
                .script(
                    "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                    vec![json!(css)],
                )
                .as_str()
                .map(str::to_owned)?;
            text.contains(needle).then_some(text)
        })
        .unwrap_or_else(|| {
            self.shot("failed");
            panic!("{css} did not show {needle:?} on {}", self.path())
        })
    }

    fn click(&self, css: &str) {
        self.runtime
            .block_on(async {
                self.client
                    .wait()
                    .at_most(Duration::from_secs(10))
                    .for_element(Locator::Css(css))
                    .await?
                    .click()
                    .await
            })
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    fn fill(&self, css: &str, text: &str) {
        self.runtime
            .block_on(async {
                let field = self.client.find(Locator::Css(css)).await?;
                field.clear().await?;
                field.send_keys(text).await
            })
            .unwrap_or_else(|e| panic!("fill {css}: {e}"));
    }

    /// What the Tab key reaches from the top of a freshly loaded `path`, in order: each
    /// control's label.
    fn tab_order(&self, path: &str, presses: usize) -> Vec<String> {
        self.goto(path);
        (0..presses)
            .map(|_| {
                self.runtime
                    .block_on(async {
                        let focused = self.client.active_element().await?;
                        focused.send_keys("\u{E004}").await
                    })
                    .expect("Tab");
                let label = self.script(
                    "const e = document.activeElement;
                     return e.getAttribute('aria-label') || e.labels?.[0]?.textContent || e.textContent.trim();",
                    vec![],
                );
                label.as_str().unwrap_or_default().to_owned()
            })
            .collect()
    }

    /// Clicks the link `css` and returns the file it downloaded as `name`.
    fn download(&self, css: &str, name: &str) -> String {
        let path = self.downloads.path().join(name);
        let _ = std::fs::remove_file(&path);
        self.click(css);
        eventually(Duration::from_secs(10), || {
            std::fs::read_to_string(&path).ok()
        })
        .unwrap_or_else(|| panic!("{css} downloaded no {name}"))
    }

    fn accept_confirm(&self) {
        eventually(Duration::from_secs(5), || {
            self.runtime.block_on(self.client.accept_alert()).ok()
        })
        .expect("a confirm prompt");
    }

    fn shot(&self, name: &str) {
        if let Ok(png) = self.runtime.block_on(self.client.screenshot()) {
            let _ = std::fs::write(self.screenshots.join(format!("{name}.png")), png);
        }
    }

    /// The page's console errors since the last call.
    fn console_errors(&self) -> Vec<String> {
        let entries = self
            .runtime
            .block_on(self.client.issue_cmd(ConsoleLog))
            .expect("chromedriver reads the browser log");
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// A page reviewed: its screenshot written, no console error, nothing a function wrote
    /// ran as script, and no serious accessibility violation.
    fn review(&self, name: &str) {
        self.shot(name);
        let errors = self.console_errors();
        assert!(errors.is_empty(), "console errors on {name}: {errors:#?}");
        let injected = self.script("return window.__xss === undefined;", vec![]);
        assert_eq!(
            injected,
            json!(true),
            "a function's output ran as script on {name}"
        );
        self.script(AXE, vec![]);
        let violations = self.script(
            "return axe.run(document, { resultTypes: ['violations'] }).then(r => r.violations
                .filter(v => v.impact === 'serious' || v.impact === 'critical')
                .map(v => v.id + ': ' + v.help + ' at ' + v.nodes.map(n => n.target.join(' ')).join(', ')));",
            vec![],
        );
        assert_eq!(violations, json!([]), "accessibility on {name}");
    }

    fn session_cookie(&self) -> String {
        let cookies = self
            .runtime
            .block_on(self.client.get_all_cookies())
            .expect("the browser's cookies");
        let mut sessions = cookies
            .into_iter()
            .filter(|c| c.name().starts_with("gust_session_"));
        let cookie = sessions.next().expect("the session cookie");
        assert!(sessions.next().is_none(), "one session cookie");
        assert_eq!(
            cookie.http_only(),
            Some(true),
            "the session cookie is HttpOnly"
        );
        assert_eq!(
            cookie.same_site().map(|s| s.to_string()),
            Some("Strict".to_owned())
        );
        format!("{}={}", cookie.name(), cookie.value())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let client = self.client.clone();
        let _ = self.runtime.block_on(client.close());
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn api_json(gust: &Gust, path: &str) -> Value {
    let response = gust.api(Method::GET, path).send().unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().unwrap()
}

#[test]
fn a_user_signs_in_sees_traffic_rolls_back_redrives_downloads_usage_and_signs_out() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy("probe", "python", "probe.py", &probe_function(), &[]);
    // A second revision to roll back from: only the memory differs.
    gust.cli(&["fn", "update", "probe", "--memory", "256"]).ok();
    gust.deploy(
        "failing",
        "python",
        "failing.py",
        "def main():\n    raise ValueError('always')\n",
        &["--max-attempts", "1"],
    );
    // What a tenant could route at /ui on the public listener: it shows the cookies it gets,
    // and sets one of its own (the browser then holds a cookie besides the session).
    let cookies = gust.write_file(
        "cookies/cookies.py",
        "from flask import request, make_response\n\ndef main():\n    response = make_response('cookies: ' + str(request.headers.get('Cookie')))\n    response.headers['Set-Cookie'] = 'theme=dark; Path=/ui'\n    return response\n",
    );
    gust.create_function("cookies", "python", &cookies, &[])
        .ok();
    gust.cli(&["route", "create", "--fn", "cookies", "--url", "/ui/cookies"])
        .ok();
    gust.cli(&[
        "timer",
        "create",
        "nightly",
        "--fn",
        "probe",
        "--cron",
        "0 3 * * *",
    ])
    .ok();
    for _ in 0..10 {
        assert_eq!(gust.get("/probe").status(), 200);
    }
    let accepted = gust
        .cli(&["fn", "invoke", "failing", "--async", "-d", "payload-7"])
        .ok();
    let dead_id = accepted.stdout.trim().to_owned();
    eventually(Duration::from_secs(20), || {
        let letters = api_json(&gust, "/v1/dlq");
        (letters.as_array()?.len() == 1).then_some(())
    })
    .expect("the failing invocation becomes a dead letter");

    let browser = Browser::start(format!("http://127.0.0.1:{}", gust.api_port));

    // Every page needs a session: the browser lands on the sign-in page.
    browser.goto("/ui/functions");
    assert_eq!(browser.path(), "/ui/login");
    browser.fill("#token", "not-a-token");
    browser.click("button[type=submit]");
    browser.wait_text("p.error", "not accepted");
    browser.review("sign-in");
    browser.fill("#token", &gust.token());
    browser.click("button[type=submit]");
    browser.wait_text("main h1", "Overview");
    browser.wait_text("#tiles", "Functions3");
    browser.wait_text("#tiles", "Dead letters1");
    let cookie = browser.session_cookie();
    browser.review("overview");

    // Browsers send a host's cookies to every port: a function routed at /ui on the public
    // listener of the same host must still not see the session.
    browser.goto_url(&gust.public_url("/ui/cookies"));
    browser.wait_text("body", "cookies:");
    browser.goto_url(&gust.public_url("/ui/cookies"));
    let seen = browser.wait_text("body", "cookies:");
    assert!(
        !seen.contains("gust_session"),
        "a function saw the session: {seen}"
    );
    // The function's page is not the dashboard's: its console (a missing favicon) is its own.
    let public = gust.public_url("/");
    let errors = browser.console_errors();
    assert!(
        errors.iter().all(|e| e.starts_with(public.as_str())),
        "{errors:?}"
    );
    assert!(
        seen.contains("theme=dark"),
        "other cookies still reach functions: {seen}"
    );

    browser.goto("/ui/functions?q=pro");
    let listed = browser.wait_text("table tbody", "probe");
    assert!(
        !listed.contains("failing"),
        "the search keeps probe only: {listed}"
    );
    browser.review("functions");
    // The overview's errors tile lists the functions with the most errors first.
    browser.goto("/ui");
    browser.click("#tiles a[href*='sort=errors']");
    browser.wait_text("table tbody tr:first-child", "failing");
    let errors_cell = browser.script(
        "return document.querySelector('table tbody tr:first-child td:nth-child(10)').textContent;",
        vec![],
    );
    assert_eq!(
        errors_cell,
        json!("1"),
        "failing's one error in the last hour"
    );

    // The function's page: charts of its minutes, its output as text, its logs live.
    browser.goto("/ui/functions/probe");
    browser.wait_text("#charts-summary", "10 requests");
    let canvases = browser.script(
        "return document.querySelectorAll('#charts canvas').length;",
        vec![],
    );
    assert_eq!(canvases, json!(7), "seven charts");
    browser.wait_text("#log-lines", PROBE_SCRIPT);
    browser.fill("#invoke-body", "from the browser");
    browser.click("form.invoke button[type=submit]");
    browser.wait_text("#invoke-result .status", "200");
    let answer = browser.wait_text("#invoke-result pre", PROBE_SCRIPT);
    assert!(answer.contains(PROBE_ATTRIBUTE), "{answer}");
    let request_id = browser.wait_text("#invoke-result .request-id", "");
    // The invocation's own log line arrives while the page is open.
    browser.wait_text("#log-lines", &request_id);
    browser.fill("#request-id", &request_id);
    browser.click("form.log-filter button");
    browser.wait_text("#log-lines", PROBE_ATTRIBUTE);
    let ids = browser.script(
        "return [...document.querySelectorAll('#log-lines li code')].map(c => c.textContent);",
        vec![],
    );
    let ids = ids.as_array().unwrap();
    assert!(
        !ids.is_empty() && ids.iter().all(|id| id == &json!(request_id)),
        "{ids:?}"
    );
    browser.click("[data-range='24h']");
    browser.wait_text("#charts-summary", "11 requests");
    browser.review("function");
    // Every control is reached with the keyboard, from the skip link on.
    let reached = browser.tab_order("/ui/functions/probe", 60);
    for control in [
        "Skip to content",
        "Functions",
        "Namespace",
        "Last day",
        "Roll back to 1",
        "Method",
        "Invoke",
        "Request id",
        "Filter",
    ] {
        assert!(
            reached.iter().any(|label| label == control),
            "Tab never reaches {control}: {reached:?}"
        );
    }
    assert_eq!(reached[0], "Skip to content");

    // Roll back to revision 1 (128 MB), confirming the prompt.
    assert_eq!(api_json(&gust, "/v1/functions/probe")["memory_mb"], 256);
    browser.click("form[data-confirm*='revision 1'] button");
    browser.accept_confirm();
    // The post answers with the function's page once the rollback is stored, saying so.
    browser.wait_text(".notice", "Rolled back: revision 3 serves now.");
    eventually(Duration::from_secs(10), || {
        let function = api_json(&gust, "/v1/functions/probe");
        (function["memory_mb"] == 128).then_some(())
    })
    .expect("the rollback serves revision 1's settings");
    let revisions = api_json(&gust, "/v1/functions/probe/revisions");
    assert_eq!(
        revisions.as_array().unwrap().last().unwrap()["copied_from"],
        1
    );

    // A write without the session's CSRF token, or from another site, changes nothing.
    let plain = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let api = format!("http://127.0.0.1:{}", gust.api_port);
    let forged = plain
        .post(format!("{api}/ui/functions/probe/rollback"))
        .header("cookie", &cookie)
        .form(&[("to", "2")])
        .send()
        .unwrap();
    assert_eq!(forged.status(), 403);
    let cross_site = plain
        .post(format!("{api}/ui/functions/probe/rollback"))
        .header("cookie", &cookie)
        .header("origin", "http://attacker.example")
        .form(&[("to", "2")])
        .send()
        .unwrap();
    assert_eq!(cross_site.status(), 403);
    assert_eq!(api_json(&gust, "/v1/functions/probe")["memory_mb"], 128);

    // The dead letter, with its payload, re-driven.
    browser.goto("/ui/async");
    browser.wait_text("#dead-letters", &dead_id);
    browser.wait_text("#dead-letters", "payload-7");
    assert_eq!(browser.wait_text("#dead-letter-count", "1"), "1");
    assert_eq!(browser.wait_text("#open", "0"), "0");
    browser.review("async");
    browser.click(&format!("button[aria-label='Re-drive {dead_id}']"));
    // The post answers with the page again, once the dead letter has gone back to the queue.
    eventually(Duration::from_secs(10), || {
        let old = api_json(&gust, &format!("/v1/invocations/{dead_id}"));
        old["redriven_to"].is_string().then_some(())
    })
    .expect("the dead letter is re-driven");
    browser.wait_text(".notice", "1 dead letter re-driven");

    browser.goto("/ui/triggers");
    browser.wait_text("#timers", "nightly");
    browser.review("triggers");

    // The usage CSV the page links to is the CLI's, byte for byte.
    browser.goto("/ui/usage?since=24h&by=hour");
    browser.wait_text("#usage", "probe");
    browser.review("usage");
    // Usage records are written in batches: a late one changes both sides, so both are read
    // again until they agree.
    eventually(Duration::from_secs(10), || {
        let downloaded = browser.download("#usage-csv", "usage.csv");
        let cli = gust
            .cli(&["usage", "--since", "24h", "--by", "hour", "-o", "csv"])
            .ok();
        (downloaded == cli.stdout).then_some(())
    })
    .expect("the dashboard's CSV equals `gust usage -o csv`");

    // Signing out ends the session on the server: the old cookie no longer opens a page.
    browser.click("form.signout button");
    browser.wait_text("main h1", "Gust");
    assert_eq!(browser.path(), "/ui/login");
    let after = plain
        .get(format!("{api}/ui/functions"))
        .header("cookie", &cookie)
        .header("accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(after.status(), 303);
    assert_eq!(after.headers()["location"], "/ui/login");
    let errors = browser.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // A tenant's viewer token lands on its own namespace; the API's rules hold in the pages.
    gust.cli(&["ns", "create", "team-a"]).ok();
    let viewer = gust
        .cli(&["token", "create", "--role", "viewer", "-n", "team-a"])
        .ok()
        .stdout
        .trim()
        .to_owned();
    browser.fill("#token", &viewer);
    browser.click("button[type=submit]");
    browser.wait_text("main h1", "Overview");
    let namespace = browser.script("return document.getElementById('namespace').value;", vec![]);
    assert_eq!(namespace, json!("team-a"));
    browser.goto("/ui/functions/probe?namespace=default");
    browser.wait_text("p.error", "does not reach namespace default");
    browser.console_errors(); // the refusal's 403, expected
    // A viewer is offered no write: no invoke form, no rollback, no re-drive or purge.
    let tenant_code = gust.write_file("tenant/t.py", "def main():\n    return 'ok'\n");
    gust.create_function("tenant", "python", &tenant_code, &["-n", "team-a"])
        .ok();
    gust.cli(&["fn", "update", "tenant", "-n", "team-a", "--memory", "256"])
        .ok();
    browser.goto("/ui/functions/tenant");
    browser.wait_text("#invoke-not-allowed", "role (viewer) may not invoke");
    let offered = browser.script(
        "return document.querySelectorAll('form.invoke, form[action*=rollback]').length;",
        vec![],
    );
    assert_eq!(offered, json!(0), "a viewer is offered writes");
    browser.review("viewer-function");
    browser.goto("/ui/no-such-page");
    browser.wait_text("main h1", "Page not found");
    browser.console_errors();
}
