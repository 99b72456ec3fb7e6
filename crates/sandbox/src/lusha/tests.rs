use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::{Sandbox, SandboxOptions};

struct Harness {
    sandbox: Sandbox,
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Harness {
    async fn start(lusha: LushaOptions) -> anyhow::Result<Self> {
        let options = SandboxOptions { lusha, ..SandboxOptions::default() };
        let sandbox = Sandbox::start(options, "127.0.0.1:0".parse()?).await?;
        let base = sandbox.lusha_url().to_string();
        let key = sandbox.lusha.api_key();
        Ok(Self {
            sandbox,
            client: reqwest::Client::builder().build()?,
            base: base.trim_end_matches('/').to_owned(),
            key,
        })
    }

    fn lusha(&self) -> &FakeLusha {
        &self.sandbox.lusha
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<reqwest::Response> {
        Ok(self.client.post(format!("{}{path}", self.base)).header("api_key", &self.key).json(body).send().await?)
    }

    async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let response = self.post(path, body).await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Emails of found, non-EU persons with at least one phone.
fn rich_emails(lusha: &FakeLusha, count: usize) -> Vec<String> {
    lusha.sample_emails(count, |lookup| {
        lookup.person().is_some_and(|p| !p.phones.is_empty() && !p.location.is_eu_contact)
    })
}

fn contacts(emails: &[String]) -> Value {
    let items: Vec<Value> = emails
        .iter()
        .enumerate()
        .map(|(index, email)| json!({"clientReferenceId": format!("ghl-{index}"), "email": email}))
        .collect();
    json!({ "contacts": items })
}

#[tokio::test]
async fn missing_or_wrong_api_key_is_401() -> anyhow::Result<()> {
    let h = Harness::start(LushaOptions::default()).await?;
    let url = format!("{}/v3/contacts/search", h.base);
    let body = contacts(&["a@example.test".to_owned()]);

    let missing = h.client.post(&url).json(&body).send().await?;
    assert_eq!(missing.status(), 401);
    assert!(header(&missing, "x-minute-requests-left").is_some());
    let missing: Value = missing.json().await?;
    assert_eq!(missing["statusCode"], 401);

    let wrong = h.client.post(&url).header("api_key", "nope").json(&body).send().await?;
    assert_eq!(wrong.status(), 401);
    let wrong: Value = wrong.json().await?;
    assert_eq!(wrong["message"], "Invalid API key");

    // `Authorization` is not how Lusha authenticates.
    let bearer = h.client.get(format!("{}/v3/account/usage", h.base)).bearer_auth(&h.key).send().await?;
    assert_eq!(bearer.status(), 401);

    let ok = h.post("/v3/contacts/search", &body).await?;
    assert_eq!(ok.status(), 200);
    for name in [
        "x-rate-limit-daily",
        "x-daily-requests-left",
        "x-daily-usage",
        "x-rate-limit-hourly",
        "x-hourly-requests-left",
        "x-hourly-usage",
        "x-rate-limit-minute",
        "x-minute-requests-left",
        "x-minute-usage",
    ] {
        assert!(header(&ok, name).is_some(), "missing {name}");
    }
    assert_eq!(header(&ok, "x-minute-usage"), Some("1"));
    assert_eq!(h.lusha().stats().unauthorized, 3);
    assert!(h.lusha().ledger().spent <= 1, "401s are free; only the authorised search may cost");

    let unknown = h.post("/v3/nothing", &json!({})).await?;
    assert_eq!(unknown.status(), 404);
    h.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn ledger_charges_once_per_person_and_field() -> anyhow::Result<()> {
    let h = Harness::start(LushaOptions::default()).await?;
    let lusha = h.lusha().clone();
    let emails = rich_emails(&lusha, 3);
    let identities: Vec<Identity> = emails.iter().map(Identity::email).collect();
    let predicted = lusha.predict_cost(&identities, &["emails", "phones"], true);

    // Search: 1 credit per found result, canReveal shows full prices.
    let (status, search) = h.post_json("/v3/contacts/search", &contacts(&emails)).await?;
    assert_eq!(status, 200);
    assert_eq!(search["billing"]["creditsCharged"], 3);
    assert_eq!(search["billing"]["resultsReturned"], 3);
    let first = &search["results"][0];
    assert!(first.get("emails").is_none(), "search never reveals");
    let can_reveal = first["canReveal"].as_array().cloned().unwrap_or_default();
    assert!(can_reveal.iter().any(|c| c["field"] == "emails" && c["credits"] == 1));
    assert!(can_reveal.iter().any(|c| c["field"] == "phones" && c["credits"].as_i64().unwrap_or(0) >= 5));
    let ids: Vec<Value> =
        search["results"].as_array().cloned().unwrap_or_default().iter().map(|r| r["id"].clone()).collect();

    // Enrich emails only: 1 credit each.
    let (status, enriched) = h
        .post_json("/v3/contacts/enrich", &json!({"ids": ids, "reveal": ["emails"], "waterfallEnabled": false}))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(enriched["billing"]["creditsCharged"], 3);
    let result = &enriched["results"][0];
    assert!(result["emails"][0]["email"].is_string());
    assert!(result.get("phones").is_none(), "phones were not asked for");

    // Enrich both: emails are free now, only phones cost.
    let (_, both) = h.post_json("/v3/contacts/enrich", &json!({"ids": ids})).await?;
    let ledger = lusha.ledger();
    assert_eq!(both["billing"]["creditsCharged"], ledger.spent_on("phone"));
    assert_eq!(ledger.spent, 3 + 3 + ledger.spent_on("phone"));
    assert_eq!(predicted, ledger.spent, "search + all reveals = prediction");

    // Enrich again: everything already revealed → 0.
    let (_, again) = h.post_json("/v3/contacts/enrich", &json!({"ids": ids, "reveal": ["phones", "emails"]})).await?;
    assert_eq!(again["billing"]["creditsCharged"], 0);
    assert_eq!(again["billing"]["resultsReturned"], 3);
    assert!(again["results"][0]["phones"].is_array());
    assert_eq!(lusha.ledger().spent, ledger.spent);
    assert!(lusha.ledger().free_reveals >= 6);

    // Search-and-enrich of the same people: pays search again, reveals are free, and
    // canReveal now says 0.
    let (_, sae) = h.post_json("/v3/contacts/search-and-enrich", &contacts(&emails)).await?;
    assert_eq!(sae["billing"]["creditsCharged"], 3);
    for result in sae["results"].as_array().cloned().unwrap_or_default() {
        for can in result["canReveal"].as_array().cloned().unwrap_or_default() {
            assert_eq!(can["credits"], 0);
        }
    }
    assert_eq!(lusha.predict_cost(&identities, &["emails", "phones"], false), 0);

    // Charges are itemised per person and datapoint, never duplicated.
    let ledger = lusha.ledger();
    let mut reveals: Vec<(String, Option<String>)> = ledger
        .charges
        .iter()
        .filter(|c| c.kind != "search")
        .map(|c| (c.person_id.clone(), c.datapoint.clone()))
        .collect();
    let before = reveals.len();
    reveals.sort();
    reveals.dedup();
    assert_eq!(reveals.len(), before);

    // Admin ledger over HTTP, and reset keeps the reveal history.
    let admin: Value = h.client.get(format!("{}/__admin/ledger", h.base)).send().await?.json().await?;
    assert_eq!(admin["spent"], ledger.spent);
    let reset = h.client.post(format!("{}/__admin/ledger/reset", h.base)).send().await?;
    assert_eq!(reset.status(), 200);
    assert_eq!(lusha.ledger().spent, 0);
    assert_eq!(lusha.ledger().balance, 10_000);
    let (_, after_reset) = h.post_json("/v3/contacts/enrich", &json!({"ids": ids})).await?;
    assert_eq!(after_reset["billing"]["creditsCharged"], 0);

    // Usage reads the ledger.
    let usage: Value =
        h.client.get(format!("{}/v3/account/usage", h.base)).header("api_key", &h.key).send().await?.json().await?;
    assert_eq!(usage["credits"]["remaining"], 10_000);
    assert_eq!(usage["pricing"]["revealPhone"]["credits"], 5);
    assert!(usage["rateLimits"]["daily"]["resetsAt"].is_string());
    h.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn results_echo_reference_and_come_out_of_order() -> anyhow::Result<()> {
    let h = Harness::start(LushaOptions::default()).await?;
    let lusha = h.lusha().clone();
    let mut emails = lusha.sample_emails(8, |l| l.person().is_some());
    let restricted = lusha.sample_emails(1, |l| matches!(l, Lookup::ComplianceRestricted));
    let reported = lusha.sample_emails(1, |l| matches!(l, Lookup::NotFound { dropped: false }));
    let dropped = lusha.sample_emails(1, |l| matches!(l, Lookup::NotFound { dropped: true }));
    emails.extend(restricted.iter().cloned());
    emails.extend(reported.iter().cloned());
    emails.extend(dropped.iter().cloned());
    let (status, body) = h.post_json("/v3/contacts/search-and-enrich", &contacts(&emails)).await?;
    assert_eq!(status, 200);
    let results = body["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 10, "the dropped NOT_FOUND is simply absent");
    let references: Vec<String> =
        results.iter().map(|r| r["clientReferenceId"].as_str().unwrap_or("").to_owned()).collect();
    let mut sorted = references.clone();
    sorted.sort_by_key(|r| r.trim_start_matches("ghl-").parse::<usize>().unwrap_or(0));
    assert_ne!(references, sorted, "results must not come back in input order");
    assert!(!references.contains(&"ghl-10".to_owned()));
    for result in &results {
        let reference = result["clientReferenceId"].as_str().unwrap_or("");
        let index: usize = reference.trim_start_matches("ghl-").parse()?;
        match index {
            0..8 => assert_eq!(result["emails"][0]["email"], emails[index].as_str()),
            8 => assert_eq!(result["error"]["code"], "COMPLIANCE_RESTRICTED"),
            9 => assert_eq!(result["error"]["code"], "NOT_FOUND"),
            _ => panic!("unexpected {reference}"),
        }
    }
    assert_eq!(body["billing"]["resultsReturned"], 8);
    // Errors are not charged: 8 searches + reveals of 8 persons.
    let identities: Vec<Identity> = emails.iter().take(8).map(Identity::email).collect();
    let search_only = 8;
    assert_eq!(body["billing"]["creditsCharged"].as_i64(), Some(lusha.ledger().spent));
    assert!(lusha.ledger().spent > search_only);
    assert_eq!(lusha.predict_cost(&identities, &["emails", "phones"], false), 0);

    // Deterministic: the same request gives the same order.
    let (_, again) = h.post_json("/v3/contacts/search", &contacts(&emails)).await?;
    let (_, third) = h.post_json("/v3/contacts/search", &contacts(&emails)).await?;
    assert_eq!(again["results"], third["results"]);
    h.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn validation_errors_are_400() -> anyhow::Result<()> {
    let h = Harness::start(LushaOptions::default()).await?;
    let emails: Vec<String> = (0..101).map(|i| format!("t{i}@example.test")).collect();
    let (status, body) = h.post_json("/v3/contacts/search", &contacts(&emails)).await?;
    assert_eq!(status, 400);
    assert_eq!(body["statusCode"], 400);
    assert_eq!(body["error"], "Bad Request");
    assert!(body["message"].is_array());

    let cases = [
        ("/v3/contacts/search", json!({"contacts": []})),
        ("/v3/contacts/search", json!({})),
        ("/v3/contacts/search", json!({"contacts": [{"firstName": "Ada", "lastName": "Test"}]})),
        ("/v3/contacts/search", json!({"contacts": [{"email": "not-an-email"}]})),
        ("/v3/contacts/enrich", json!({"ids": [123]})),
        ("/v3/contacts/enrich", json!({"ids": (0..101).map(|i| i.to_string()).collect::<Vec<_>>()})),
        ("/v3/contacts/enrich", json!({"ids": ["x"], "reveal": ["fax"]})),
        ("/v3/contacts/search-and-enrich", json!({"contacts": [{"email": "a@example.test"}], "reveal": []})),
        ("/v3/contacts/prospecting", json!({"pagination": {"page": 0, "size": 500}})),
    ];
    for (path, body) in cases {
        let (status, answer) = h.post_json(path, &body).await?;
        assert_eq!(status, 400, "{path} {body} → {answer}");
    }
    let raw = h
        .client
        .post(format!("{}/v3/contacts/search", h.base))
        .header("api_key", &h.key)
        .body("{not json")
        .send()
        .await?;
    assert_eq!(raw.status(), 400);
    // Name + company is a valid identifier; an unknown id is a NOT_FOUND item.
    let (status, _) = h
        .post_json(
            "/v3/contacts/search",
            &json!({"contacts": [{"firstName": "Ada", "lastName": "Test", "companyDomain": "acme.example.test"}]}),
        )
        .await?;
    assert_eq!(status, 200);
    let (status, unknown) = h.post_json("/v3/contacts/enrich", &json!({"ids": ["v1.unknown"]})).await?;
    assert_eq!(status, 200);
    assert_eq!(unknown["results"][0]["error"]["code"], "NOT_FOUND");
    assert_eq!(unknown["billing"]["creditsCharged"], 0);
    assert_eq!(h.lusha().ledger().spent, h.lusha().ledger().spent_on("search"));
    h.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn insufficient_balance_is_402_and_charges_nothing() -> anyhow::Result<()> {
    let h = Harness::start(LushaOptions { credits: 0, ..LushaOptions::default() }).await?;
    let lusha = h.lusha().clone();
    let emails = rich_emails(&lusha, 2);
    let (status, body) = h.post_json("/v3/contacts/search", &contacts(&emails)).await?;
    assert_eq!(status, 402);
    assert_eq!(body["statusCode"], 402);
    let ledger = lusha.ledger();
    assert_eq!((ledger.balance, ledger.spent, ledger.charges.len()), (0, 0, 0));

    // Enough for the searches but not the reveals: still 402, still nothing charged.
    lusha.set_credits(3);
    let (status, _) = h.post_json("/v3/contacts/search-and-enrich", &contacts(&emails)).await?;
    assert_eq!(status, 402);
    assert_eq!(lusha.ledger().balance, 3);
    assert!(lusha.ledger().charges.is_empty());

    // Over the admin route; then the same call succeeds and charges exactly the prediction.
    let identities: Vec<Identity> = emails.iter().map(Identity::email).collect();
    let cost = lusha.predict_cost(&identities, &["emails", "phones"], true);
    let set = h.client.post(format!("{}/__admin/credits", h.base)).json(&json!({"balance": cost})).send().await?;
    assert_eq!(set.status(), 200);
    let (status, body) = h.post_json("/v3/contacts/search-and-enrich", &contacts(&emails)).await?;
    assert_eq!(status, 200);
    assert_eq!(body["billing"]["creditsCharged"].as_i64(), Some(cost));
    assert_eq!(lusha.ledger().balance, 0);
    // Re-reveals at zero balance are free, so they are allowed.
    let ids: Vec<Value> =
        body["results"].as_array().cloned().unwrap_or_default().iter().map(|r| r["id"].clone()).collect();
    let (status, _) = h.post_json("/v3/contacts/enrich", &json!({"ids": ids})).await?;
    assert_eq!(status, 200);
    assert_eq!(lusha.stats().payment_required, 2);
    h.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn rate_limits_answer_three_distinct_429s() -> anyhow::Result<()> {
    let h = Harness::start(LushaOptions { per_minute: 3, per_hour: 0, per_day: 0, ..LushaOptions::default() }).await?;
    let body = contacts(&["a@example.test".to_owned()]);
    for expected_left in ["2", "1", "0"] {
        let ok = h.post("/v3/contacts/search", &body).await?;
        assert_eq!(ok.status(), 200);
        assert_eq!(header(&ok, "x-minute-requests-left"), Some(expected_left));
    }
    let limited = h.post("/v3/contacts/search", &body).await?;
    assert_eq!(limited.status(), 429);
    assert!(header(&limited, "retry-after").is_none());
    assert_eq!(header(&limited, "x-minute-requests-left"), Some("0"));
    assert_eq!(header(&limited, "x-rate-limit-minute"), Some("3"));
    let message: Value = limited.json().await?;
    let text = message["message"].as_str().unwrap_or("");
    assert!(!text.contains("Daily") && !text.contains("Hourly"), "{text}");
    assert_eq!(h.lusha().stats().rate_limited, 1);

    // Hourly variant.
    h.lusha().reset_rate_limits();
    h.lusha().set_limits(0, 2, 0);
    for _ in 0..2 {
        assert_eq!(h.post("/v3/contacts/search", &body).await?.status(), 200);
    }
    let hourly = h.post("/v3/contacts/search", &body).await?;
    assert_eq!(hourly.status(), 429);
    assert_eq!(header(&hourly, "x-hourly-requests-left"), Some("0"));
    let text: Value = hourly.json().await?;
    let text = text["message"].as_str().unwrap_or("").to_owned();
    assert!(text.starts_with("Hourly API rate limit exceeded. Limit: 2 calls per hour. Reset in "), "{text}");

    // Daily variant, recognisable from the header even without reading the text.
    h.lusha().reset_rate_limits();
    h.lusha().set_limits(0, 0, 1);
    assert_eq!(h.post("/v3/contacts/search", &body).await?.status(), 200);
    let daily = h.post("/v3/contacts/search", &body).await?;
    assert_eq!(daily.status(), 429);
    assert_eq!(header(&daily, "x-daily-requests-left"), Some("0"));
    let text: Value = daily.json().await?;
    assert_eq!(text["message"], "Daily API quota limit exceeded. Limit 1 calls per day");

    // Usage endpoint: 5 per minute on its own.
    h.lusha().reset_rate_limits();
    h.lusha().set_limits(0, 0, 0);
    let usage = format!("{}/v3/account/usage", h.base);
    for _ in 0..5 {
        let ok = h.client.get(&usage).header("api_key", &h.key).send().await?;
        assert_eq!(ok.status(), 200);
    }
    let limited = h.client.get(&usage).header("api_key", &h.key).send().await?;
    assert_eq!(limited.status(), 429);
    assert_eq!(h.post("/v3/contacts/search", &body).await?.status(), 200);
    h.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn faults_fire_as_configured() -> anyhow::Result<()> {
    let h = Harness::start(LushaOptions::default()).await?;
    let lusha = h.lusha().clone();
    let emails = rich_emails(&lusha, 1);

    lusha.set_fault("search", Fault::Error { status: 503, rate: 1.0 });
    let (status, _) = h.post_json("/v3/contacts/search", &contacts(&emails)).await?;
    assert_eq!(status, 503);
    assert_eq!(lusha.ledger().spent, 0, "pre-work faults charge nothing");

    lusha.set_fault("contacts/search", Fault::Malformed);
    let malformed = h.post("/v3/contacts/search", &contacts(&emails)).await?;
    assert_eq!(malformed.status(), 200);
    let text = malformed.text().await?;
    assert!(serde_json::from_str::<Value>(&text).is_err());
    assert_eq!(lusha.ledger().spent, 1, "malformed answers were still charged");

    lusha.set_fault("/v3/contacts/search-and-enrich", Fault::HangAfterCharge(Duration::from_millis(800)));
    let hung = h
        .client
        .post(format!("{}/v3/contacts/search-and-enrich", h.base))
        .header("api_key", &h.key)
        .json(&contacts(&emails))
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(hung.is_err(), "client must time out");
    assert!(lusha.ledger().spent > 1, "charged although the client never saw an answer");

    lusha.set_fault("*", Fault::ClientClosedAfterCharge);
    let closed = h.post("/v3/contacts/prospecting", &json!({})).await?;
    assert_eq!(closed.status(), 499);

    // Over the admin route.
    let set = h
        .client
        .post(format!("{}/__admin/faults", h.base))
        .json(&json!({"route": "usage", "fault": {"kind": "latency", "ms": 150}}))
        .send()
        .await?;
    assert_eq!(set.status(), 200);
    let started = std::time::Instant::now();
    let slow = h.client.get(format!("{}/v3/account/usage", h.base)).header("api_key", &h.key).send().await?;
    assert_eq!(slow.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));

    let cleared = h.client.delete(format!("{}/__admin/faults", h.base)).send().await?;
    assert_eq!(cleared.status(), 204);
    let (status, _) = h.post_json("/v3/contacts/search", &contacts(&emails)).await?;
    assert_eq!(status, 200);
    assert!(lusha.stats().faults_fired >= 4);
    Ok(())
}

#[tokio::test]
async fn prospecting_pages_through_generated_and_added_leads() -> anyhow::Result<()> {
    let h = Harness::start(LushaOptions { prospecting_leads: 30, ..LushaOptions::default() }).await?;
    let lusha = h.lusha().clone();
    let ids =
        lusha.add_leads(vec![json!({"firstName": "Test", "lastName": "Existing", "email": "existing@example.test",
               "phones": [{"number": "+1 555 000 0001", "doNotCall": true}],
               "company": {"name": "Test Existing Co", "domain": "existing.example.test"}})]);
    let over_http: Value = h
        .client
        .post(format!("{}/__admin/leads", h.base))
        .json(&json!([{"id": "4389064654", "email": "second@example.test"}]))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(over_http["ids"][0], "4389064654");

    let mut seen = Vec::new();
    for page in 0..3 {
        let (status, body) = h
            .post_json(
                "/v3/contacts/prospecting",
                &json!({"pagination": {"page": page, "size": 15}, "filters": {"contacts": {"include": {}}}}),
            )
            .await?;
        assert_eq!(status, 200);
        assert_eq!(body["totalResults"], 32);
        assert_eq!(body["billing"]["creditsCharged"], 0);
        for lead in body["results"].as_array().cloned().unwrap_or_default() {
            assert!(lead.get("emails").is_none(), "previews only");
            seen.push(lead["id"].as_str().unwrap_or("").to_owned());
        }
    }
    assert_eq!(seen.len(), 32);
    assert_eq!(seen, lusha.lead_ids());
    assert!(seen.contains(&ids[0]));

    // Enrich the added lead by id: its email comes back; it is also searchable by email.
    let (_, enriched) = h.post_json("/v3/contacts/enrich", &json!({"ids": [ids[0].clone(), "4389064654"]})).await?;
    let results = enriched["results"].as_array().cloned().unwrap_or_default();
    assert!(
        results
            .iter()
            .any(|r| r["emails"][0]["email"] == "existing@example.test" && r["phones"][0]["doNotCall"] == true)
    );
    assert!(results.iter().any(|r| r["emails"][0]["email"] == "second@example.test"));
    let (_, found) = h
        .post_json(
            "/v3/contacts/search",
            &json!({"contacts": [{"clientReferenceId": "c1", "email": "Existing@example.test"}]}),
        )
        .await?;
    assert_eq!(found["results"][0]["id"], ids[0].as_str());

    // Filters narrow the leads.
    let (_, filtered) = h
        .post_json(
            "/v3/contacts/prospecting",
            &json!({"filters": {"companies": {"include": {"domains": ["existing.example.test"]}}}}),
        )
        .await?;
    assert_eq!(filtered["totalResults"], 1);
    h.sandbox.stop().await;
    Ok(())
}
