//! envs/list's opt-in pages (`{"limit": N, "after": "<name>"}`, issue 18):
//! name order, `next`, the last page, a name removed between two pages, a
//! bad limit, and names of another workspace never listed.

use serde_json::{json, Value};

use crate::harness::*;

fn names(v: &Value) -> Vec<String> {
    v["envs"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

async fn page(api: &Api, body: Value) -> (Vec<String>, Option<String>) {
    let (s, v) = api.post("/api/connectors/envs/list", body.clone()).await;
    assert_eq!(s, 200, "{body}: {v}");
    (names(&v), v["next"].as_str().map(String::from))
}

/// Every page of `limit`, from the start, following `next`.
async fn walk(api: &Api, limit: usize) -> Vec<Vec<String>> {
    let (mut pages, mut after) = (Vec::new(), None::<String>);
    loop {
        let (envs, next) = page(api, json!({"limit": limit, "after": after})).await;
        assert!(envs.len() <= limit, "{envs:?}");
        pages.push(envs);
        match next {
            Some(n) => {
                assert_eq!(
                    Some(&n),
                    pages.last().unwrap().last(),
                    "next is the page's last name"
                );
                after = Some(n);
            }
            None => return pages,
        }
    }
}

#[tokio::test]
async fn envs_list_pages_in_name_order_within_the_workspace() {
    let w = World::start(&[]).await;
    let url = w.gateway.url();
    let mut executors = Vec::new();
    // w1: laptop (the World's), and these; "cc" never connects.
    for name in ["d", "b", "c", "a"] {
        let token = admin(
            &w.data_dir,
            &["executor", "add", "--workspace", "w1", "--name", name],
        );
        let work = w.dir.path().join(format!("work-{name}"));
        std::fs::create_dir_all(&work).unwrap();
        executors.push(start_executor(&url, &token, &work, &[]));
        wait_for_env(&w.api, name).await;
    }
    admin(
        &w.data_dir,
        &["executor", "add", "--workspace", "w1", "--name", "cc"],
    );
    // w2: names between w1's.
    admin(&w.data_dir, &["workspace", "create", "w2"]);
    let token2 = admin(&w.data_dir, &["token", "create", "--workspace", "w2"]);
    let api2 = Api::new(&url, &token2);
    for name in ["bb", "ab"] {
        let token = admin(
            &w.data_dir,
            &["executor", "add", "--workspace", "w2", "--name", name],
        );
        let work = w.dir.path().join(format!("work2-{name}"));
        std::fs::create_dir_all(&work).unwrap();
        executors.push(start_executor(&url, &token, &work, &[]));
        wait_for_env(&api2, name).await;
    }

    // The whole list, as before: no next.
    let all = ["a", "b", "c", "d", "laptop"];
    let (s, v) = w.api.post("/api/connectors/envs/list", json!({})).await;
    assert_eq!((s, names(&v)), (200, all.map(String::from).to_vec()));
    assert!(v.get("next").is_none(), "{v}");
    // Unknown fields are still ignored.
    assert_eq!(page(&w.api, json!({"page": 3, "x": null})).await.0, all);

    // Pages of 2: a b | c d | laptop.
    assert_eq!(
        walk(&w.api, 2).await,
        [vec!["a", "b"], vec!["c", "d"], vec!["laptop"]]
    );
    // A last page that is exactly full has no next.
    assert_eq!(
        page(&w.api, json!({"limit": 1, "after": "d"})).await,
        (vec!["laptop".to_string()], None)
    );
    assert_eq!(
        page(&w.api, json!({"limit": 5})).await,
        (all.map(String::from).to_vec(), None)
    );
    assert_eq!(
        page(&w.api, json!({"limit": 4})).await,
        (
            vec!["a", "b", "c", "d"]
                .into_iter()
                .map(String::from)
                .collect(),
            Some("d".into())
        )
    );
    // After the last name: an empty last page.
    assert_eq!(
        page(&w.api, json!({"after": "laptop"})).await,
        (vec![], None)
    );
    // `after` alone: everything after it.
    assert_eq!(
        page(&w.api, json!({"after": "b"})).await.0,
        ["c", "d", "laptop"]
    );
    // Pages of 1000 (the most) walk everything at once.
    assert_eq!(walk(&w.api, 1000).await, [all.to_vec()]);

    // Another workspace's names: never listed, and as `after` they only
    // place the page in this workspace's order.
    assert_eq!(walk(&api2, 1).await, [vec!["ab"], vec!["bb"]]);
    assert_eq!(
        page(&w.api, json!({"after": "bb", "limit": 2})).await,
        (vec!["c".to_string(), "d".to_string()], Some("d".into()))
    );
    assert_eq!(
        page(&api2, json!({"after": "a", "limit": 10})).await.0,
        ["ab", "bb"]
    );

    // A name removed between two pages: the next page starts after it.
    let (first, next) = page(&w.api, json!({"limit": 2})).await;
    assert_eq!(
        (first, next.as_deref()),
        (vec!["a".to_string(), "b".to_string()], Some("b"))
    );
    admin(
        &w.data_dir,
        &["executor", "remove", "--workspace", "w1", "b"],
    );
    assert_eq!(
        page(&w.api, json!({"limit": 2, "after": "b"})).await,
        (vec!["c".to_string(), "d".to_string()], Some("d".into()))
    );
    assert_eq!(walk(&w.api, 2).await, [vec!["a", "c"], vec!["d", "laptop"]]);

    // The Rust client's pages.
    let client = execgate_client::Client::new(url.clone(), w.api.token.clone()).unwrap();
    let (envs, next) = client.envs_page(3, None).await.unwrap();
    let got: Vec<&str> = envs.iter().map(|e| e.name.as_str()).collect();
    assert_eq!((got, next.as_deref()), (vec!["a", "c", "d"], Some("d")));
    let (envs, next) = client.envs_page(3, Some("d")).await.unwrap();
    assert_eq!(
        (envs.len(), &envs[0].name, next),
        (1, &"laptop".to_string(), None)
    );
    match client.envs_page(0, None).await {
        Err(e) => assert_eq!(e.code(), Some("bad_request"), "{e}"),
        Ok(v) => panic!("a limit of 0 was answered: {v:?}"),
    }

    // A bad limit or after: 400 in the envelope.
    for bad in [
        json!({"limit": 0}),
        json!({"limit": 1001}),
        json!({"limit": -5}),
        json!({"limit": "10"}),
        json!({"limit": 2.5}),
        json!({"after": 7}),
    ] {
        let (s, v) = w.api.post("/api/connectors/envs/list", bad.clone()).await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{bad}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains(if bad.get("after").is_some() {
                    "after"
                } else {
                    "limit"
                }),
            "{v}"
        );
    }
    drop(executors);
}
