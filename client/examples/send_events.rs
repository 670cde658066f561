//! Sends a pageview, a call-to-action click and a form submit of one session to the bridge
//! `cargo dev run` started, then reports what was delivered:
//!
//! ```sh
//! cargo run -p eye-client --example send_events
//! EYE_BRIDGE_URL=https://eye.example.com EYE_API_KEY=… cargo run -p eye-client --example send_events
//! ```

use eye_client::{Client, ClientConfig, Event};
use serde_json::json;
use uuid::Uuid;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("EYE_BRIDGE_URL").unwrap_or("http://127.0.0.1:8080".into());
    let key = std::env::var("EYE_API_KEY").unwrap_or("eye-local-dev-key".into());
    let client = Client::start(ClientConfig::new(&url, &key))?;

    let session = Uuid::new_v4();
    let page = json!({"host": "www.example.com", "path": "/pricing"});
    client
        .send(Event::new(session, "page interaction", "pageview", page))
        .await?;
    let click = json!({"host": "www.example.com", "path": "/pricing", "element": "start trial"});
    client
        .send(Event::new(session, "page interaction", "cta click", click))
        .await?;
    let form = json!({"host": "www.example.com", "path": "/signup",
                      "form": {"first_name": "John", "last_name": "Doe"}});
    client
        .send(Event::new(session, "form interaction", "submit", form))
        .await?;

    // Sends what is queued, retrying what the bridge could not take yet.
    let report = client.close().await;
    println!("delivered {} events of session {session}", report.delivered);
    for undelivered in &report.undelivered {
        eprintln!(
            "not delivered: {}: {}",
            undelivered.event_id, undelivered.error
        );
    }
    Ok(())
}
