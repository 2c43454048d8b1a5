//! Goal: with `api.admin_require_token` on (the default when the API binds beyond loopback),
//! an admin call needs the bearer token even from loopback; without a token file configured
//! it is refused (403) with the reason; read-only endpoints stay open.
//!
//! Method: one in-process node, admin calls from loopback with and without the token.

mod harness;

use std::time::Duration;

use harness::{Cluster, run};
use haseq_actors::api_client;

const CALL: Duration = Duration::from_secs(2);

#[test]
fn admin_calls_need_the_token_when_required_even_from_loopback() {
    run(async {
        let mut c = Cluster::start_configured(1, |s| {
            s.admin_require_token = true;
            s.admin_token = Some("t0ken".into());
        })
        .await;
        c.wait_leader(Duration::from_secs(10)).await;
        let api = c.node(0).api_addr.to_string();
        let r = api_client::request(&api, "POST", "/admin/resume", Some("{}"), CALL)
            .await
            .unwrap();
        assert_eq!(r.status, 403, "{}", r.body);
        assert!(r.body.contains("admin_require_token"), "{}", r.body);
        let r = api_client::request_auth(
            &api,
            "POST",
            "/admin/resume",
            Some("{}"),
            Some("t0ken"),
            CALL,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let r = api_client::request(&api, "GET", "/status", None, CALL)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "read-only calls need no token");
        c.stop_all().await;

        // Required, and no token configured: every admin call is refused, saying why.
        let mut c = Cluster::start_configured(1, |s| s.admin_require_token = true).await;
        c.wait_leader(Duration::from_secs(10)).await;
        let api = c.node(0).api_addr.to_string();
        let r = api_client::request(
            &api,
            "POST",
            "/admin/members/promote",
            Some(r#"{"id":"x"}"#),
            CALL,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 403, "{}", r.body);
        assert!(r.body.contains("no api.admin_token_file"), "{}", r.body);
        c.stop_all().await;
    });
}
