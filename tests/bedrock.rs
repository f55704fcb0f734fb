//! Amazon Bedrock: a pool of AWS credentials behind `/bedrock/`, each attempt signed for its
//! own credential. The mock checks every signature with botocore; the clients are boto3 and
//! the Anthropic Bedrock client.

use serde_json::{Value, json};

use crate::harness::bedrock::{
    AKID1, AKID2, API_KEY, CALLER_AKID, ClientRun, MOCK_SECRETS, MODEL, MockBedrock, OTHER_MODEL,
    TOKEN2, claude_code, pooled_keys, run_client,
};
use crate::harness::{Server, Test};

/// boto3's `bedrock-runtime` client at the bridge, retries off.
const BOTO3: &str = r#"
import json, os, sys, boto3
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError
client = boto3.client("bedrock-runtime", endpoint_url=os.environ["BRIDGE"],
                      config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))
BODY = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10,
                   "messages": [{"role": "user", "content": "hi"}]})
MODEL = os.environ.get("MODEL", "us.anthropic.claude-sonnet-4-5-20250929-v1:0")
def error(e):
    meta = e.response.get("ResponseMetadata", {})
    print(json.dumps({"error": e.response["Error"]["Code"],
                      "message": e.response["Error"].get("Message", ""),
                      "status": meta.get("HTTPStatusCode"),
                      "retry_after": meta.get("HTTPHeaders", {}).get("retry-after")}))
def invoke():
    """One InvokeModel: the answer's text, or the error boto3 raised."""
    try:
        r = client.invoke_model(modelId=MODEL, body=BODY)
        print(json.dumps({"text": json.loads(r["body"].read())["content"][0]["text"]}))
    except ClientError as e:
        error(e)
"#;

/// The bridge with the pooled credentials at `mock`; `top` holds top-level settings.
fn bridge_with(mock: &MockBedrock, top: &str) -> Test {
    let mut test = Test::new().config(&format!(
        "{top}\n[providers.bedrock]\nbase_url = \"{}\"\nregion = \"us-west-2\"\nkeys = [{}]\n",
        mock.url(),
        pooled_keys()
    ));
    for secret in MOCK_SECRETS {
        test = test.secret(secret);
    }
    test
}

fn boto3(server: &Server, script: &str, model: &str) -> ClientRun {
    let run = run_client(
        &format!("{BOTO3}\n{script}"),
        &server.url("/bedrock"),
        &[("MODEL", model)],
    );
    assert!(!run.stdout.contains(CALLER_AKID), "{run:?}");
    run
}

fn throttled() -> Value {
    json!({"error": "ThrottlingException", "status": 429,
           "message": "Too many requests, please wait before trying again."})
}

/// The state of `akid`'s credential in the pool, and its cooling models.
fn credential_state(server: &Server, akid: &str) -> Value {
    let pool = server.pool();
    let bedrock = pool["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|provider| provider["name"] == "bedrock")
        .unwrap()
        .clone();
    bedrock["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["hint"].as_str().unwrap().starts_with(&akid[..4]))
        .unwrap_or_else(|| panic!("no {akid} in {bedrock}"))
        .clone()
}

#[test]
fn boto3_invoke_model_fails_over_from_a_throttled_credential_signed_for_each() {
    let mock = MockBedrock::start(json!({AKID1: [throttled()], "default": [{"ok": true}]}));
    let server = bridge_with(&mock, "").serve();
    let run = boto3(&server, "invoke()", MODEL);
    assert_eq!(run.json()["text"], format!("hello from {AKID2}"), "{run:?}");
    let requests = mock.requests();
    assert_eq!(mock.signers(), [AKID1, AKID2]);
    for request in &requests {
        assert_eq!(request["signature_ok"], true, "{request}");
        // boto3 writes the model id's `:` as %3A; it goes on as the caller wrote it.
        assert_eq!(
            request["path"],
            "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke"
        );
        assert!(
            request["body"]
                .as_str()
                .unwrap()
                .contains("\"max_tokens\": 10")
        );
    }
    assert_eq!(
        requests[0]["body"], requests[1]["body"],
        "replayed byte for byte"
    );
    // Each signed for its own region: the first names one, the second takes the provider's.
    let scope = |request: &Value| {
        request["headers"]["authorization"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(scope(&requests[0]).contains("/us-east-1/bedrock/aws4_request"));
    assert!(scope(&requests[1]).contains("/us-west-2/bedrock/aws4_request"));
    assert!(requests[0]["headers"].get("x-amz-security-token").is_none());
    assert_eq!(requests[1]["headers"]["x-amz-security-token"], TOKEN2);
    let first = credential_state(&server, AKID1);
    assert_eq!(
        first["state"], "available",
        "cooling for the model only: {first}"
    );
    assert!(first.to_string().contains(MODEL), "{first}");
}

#[test]
fn boto3_converse_and_both_streams_through_a_throttled_first_credential() {
    let mock = MockBedrock::start(json!({AKID1: [throttled()], "default": [{"ok": true}]}));
    let test = bridge_with(&mock, "request_log = \"requests.jsonl\"");
    let server = test.serve();
    let run = boto3(
        &server,
        r#"
messages = [{"role": "user", "content": [{"text": "hi"}]}]
converse = client.converse(modelId=MODEL, messages=messages)
text = converse["output"]["message"]["content"][0]["text"]
streamed = "".join(e["contentBlockDelta"]["delta"]["text"]
                   for e in client.converse_stream(modelId=MODEL, messages=messages)["stream"]
                   if "contentBlockDelta" in e)
chunks = client.invoke_model_with_response_stream(modelId=MODEL, body=BODY)["body"]
events = [json.loads(e["chunk"]["bytes"]) for e in chunks]
invoked = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
print(json.dumps({"converse": text, "usage": converse["usage"], "converse_stream": streamed,
                  "invoke_stream": invoked, "last": events[-1]["type"]}))
"#,
        MODEL,
    );
    let answer = run.json();
    let expected = format!("hello from {AKID2}");
    assert_eq!(answer["converse"], expected, "{run:?}");
    assert_eq!(answer["usage"]["inputTokens"], 11);
    assert_eq!(answer["converse_stream"], expected);
    assert_eq!(answer["invoke_stream"], expected);
    assert_eq!(answer["last"], "message_stop");
    let paths: Vec<_> = mock
        .requests()
        .iter()
        .map(|request| request["path"].as_str().unwrap().to_owned())
        .collect();
    let model = "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0";
    assert_eq!(
        paths,
        [
            format!("/model/{model}/converse"),
            format!("/model/{model}/converse"),
            format!("/model/{model}/converse-stream"),
            format!("/model/{model}/invoke-with-response-stream"),
        ]
    );
    // Throttled once, then cooling for the model: the rest go straight to the second.
    assert_eq!(mock.signers(), [AKID1, AKID2, AKID2, AKID2]);
    drop(server);
    // Usage from the blocking answer and from both kinds of stream events.
    let log = std::fs::read_to_string(test.path("requests.jsonl")).unwrap();
    let records: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let seen: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r["route"].clone(),
                r["stream"].clone(),
                r["input_tokens"].clone(),
                r["output_tokens"].clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (json!("converse"), json!(false), json!(11), json!(7)),
            (json!("converse_stream"), json!(true), json!(11), json!(7)),
            (
                json!("invoke_with_response_stream"),
                json!(true),
                json!(11),
                json!(7)
            ),
        ],
        "{log}"
    );
    assert!(records.iter().all(|r| r["model"] == MODEL), "{log}");
}

#[test]
fn every_credential_throttled_is_a_throttling_exception_to_boto3() {
    let mock = MockBedrock::start(json!({"default": [throttled()]}));
    let server = bridge_with(&mock, "").serve();
    let run = boto3(&server, "invoke()", MODEL);
    let answer = run.json();
    assert_eq!(answer["error"], "ThrottlingException", "{run:?}");
    assert_eq!(answer["status"], 429);
    assert_eq!(
        answer["retry_after"], "60",
        "the default cooldown: {answer}"
    );
    assert_eq!(mock.signers(), [AKID1, AKID2]);
}

#[test]
fn a_stream_cut_mid_way_makes_boto3_raise() {
    for cut in [json!({"cut": 3}), json!({"cut_mid_frame": 3})] {
        let mock = MockBedrock::start(json!({"default": [cut]}));
        let server = bridge_with(&mock, "").serve();
        let run = boto3(
            &server,
            r#"
got = []
try:
    for e in client.invoke_model_with_response_stream(modelId=MODEL, body=BODY)["body"]:
        got.append(json.loads(e["chunk"]["bytes"])["type"])
    print(json.dumps({"silently_short": got}))
except EventStreamError as e:
    print(json.dumps({"raised": "EventStreamError", "code": e.response["Error"]["Code"],
                      "message": e.response["Error"]["Message"], "got": got}))
except Exception as e:
    print(json.dumps({"raised": type(e).__name__, "got": got}))
"#,
            MODEL,
        );
        let answer = run.json();
        assert!(answer.get("raised").is_some(), "{cut}: {run:?}");
        assert_eq!(
            answer["got"].as_array().unwrap().len(),
            3,
            "{cut}: {answer}"
        );
        if cut.get("cut").is_some() {
            // Cut between frames: an exception frame that says what happened.
            assert_eq!(answer["raised"], "EventStreamError", "{answer}");
            assert_eq!(answer["code"], "internalServerException", "{answer}");
            assert!(
                answer["message"]
                    .as_str()
                    .unwrap()
                    .contains("upstream stream interrupted"),
                "{answer}"
            );
        }
        assert_eq!(mock.requests().len(), 1, "never sent again once started");
    }
}

#[test]
fn a_model_access_denial_rests_the_credential_for_that_model_only() {
    let denied = json!({"error": "AccessDeniedException", "status": 403,
        "message": "You don't have access to the model with the specified model ID."});
    let mock =
        MockBedrock::start(json!({AKID1: [denied, {"ok": true}], "default": [{"ok": true}]}));
    let test = bridge_with(&mock, "");
    let server = test.serve();
    let script = "invoke()";
    assert_eq!(
        boto3(&server, script, MODEL).json()["text"],
        format!("hello from {AKID2}")
    );
    // The same credential still serves another model, and rests for the first.
    let other = boto3(&server, script, OTHER_MODEL);
    assert_eq!(
        other.json()["text"],
        format!("hello from {AKID1}"),
        "{other:?}"
    );
    assert_eq!(
        boto3(&server, script, MODEL).json()["text"],
        format!("hello from {AKID2}")
    );
    assert_eq!(mock.signers(), [AKID1, AKID2, AKID1, AKID2]);
    let first = credential_state(&server, AKID1);
    assert_eq!(first["state"], "available", "{first}");
    assert_eq!(
        first["cooling"][MODEL]["reason"], "no_model_access",
        "{first}"
    );
    assert!(first["cooling"].get(OTHER_MODEL).is_none(), "{first}");
    let status = test
        .run_with(&["pool", "status", "--server", &server.base])
        .success();
    assert!(
        status.stdout.contains(&format!("{MODEL}: no_model_access")),
        "{}",
        status.stdout
    );
}

#[test]
fn bad_and_expired_credentials_are_disabled_and_a_model_not_ready_marks_nothing() {
    let mock = MockBedrock::start(json!({
        AKID1: [{"error": "UnrecognizedClientException", "status": 403,
                 "message": "The security token included in the request is invalid."}],
        AKID2: [{"error": "ExpiredTokenException", "status": 403,
                 "message": "The security token included in the request is expired"}],
    }));
    let server = bridge_with(&mock, "").serve();
    let script = "invoke()";
    let answer = boto3(&server, script, MODEL).json();
    assert_eq!(answer["error"], "AccessDeniedException", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("aibridge pool status"),
        "{answer}"
    );
    assert_eq!(credential_state(&server, AKID1)["reason"], "unauthorized");
    assert_eq!(credential_state(&server, AKID2)["reason"], "expired");

    let not_ready = MockBedrock::start(json!({"default": [{"error": "ModelNotReadyException",
        "status": 429, "message": "Model is not ready for inference."}]}));
    let server = bridge_with(&not_ready, "").serve();
    let answer = boto3(&server, script, MODEL).json();
    assert_eq!(answer["error"], "ModelNotReadyException", "{answer}");
    assert_eq!(not_ready.signers(), [AKID1], "passed back, no failover");
    assert!(server.all_keys_available());
}

#[test]
fn an_inference_profile_arn_and_a_control_plane_query_are_signed_as_sent() {
    let mock = MockBedrock::start(json!({"default": [{"ok": true}]}));
    let server = bridge_with(&mock, "").serve();
    let arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-5-20250929-v1:0";
    let run = boto3(
        &server,
        r#"
r = client.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}])
control = boto3.client("bedrock", endpoint_url=os.environ["BRIDGE"],
                       config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))
profiles = control.list_inference_profiles(typeEquals="SYSTEM_DEFINED")
print(json.dumps({"text": r["output"]["message"]["content"][0]["text"],
                  "profiles": profiles["inferenceProfileSummaries"]}))
"#,
        arn,
    );
    assert_eq!(run.json()["text"], format!("hello from {AKID1}"), "{run:?}");
    let requests = mock.requests();
    assert_eq!(
        requests[0]["path"],
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F\
         us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse"
    );
    assert_eq!(
        requests[1]["path"],
        "/inference-profiles?type=SYSTEM_DEFINED"
    );
    assert!(
        requests
            .iter()
            .all(|request| request["signature_ok"] == true)
    );
}

#[test]
fn anthropic_bedrock_client_blocking_and_streaming() {
    let mock =
        MockBedrock::start(json!({AKID1: [throttled(), {"ok": true}], "default": [{"ok": true}]}));
    let server = bridge_with(&mock, "").serve();
    let run = run_client(
        r#"
import json, os
from anthropic import AnthropicBedrock
client = AnthropicBedrock(base_url=os.environ["BRIDGE"], aws_region="us-east-1",
                          aws_access_key="AKIACALLER0000000009",
                          aws_secret_key="caller/secret+0000000000000000000000000009",
                          max_retries=0)
model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
message = client.messages.create(model=model, max_tokens=10,
                                 messages=[{"role": "user", "content": "hi"}])
with client.messages.stream(model=model, max_tokens=10,
                            messages=[{"role": "user", "content": "hi"}]) as stream:
    streamed = "".join(stream.text_stream)
print(json.dumps({"blocking": message.content[0].text, "streamed": streamed}))
"#,
        &server.url("/bedrock"),
        &[],
    );
    let answer = run.json();
    assert_eq!(answer["blocking"], format!("hello from {AKID2}"), "{run:?}");
    assert_eq!(answer["streamed"], format!("hello from {AKID2}"), "{run:?}");
    let requests = mock.requests();
    // The client writes the model id's `:` raw; it goes on (and is signed) as written.
    assert_eq!(
        requests[0]["path"],
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke"
    );
    assert!(
        requests
            .iter()
            .all(|request| request["signature_ok"] == true)
    );
    assert_eq!(mock.signers(), [AKID1, AKID2, AKID2]);
}

#[test]
fn a_bedrock_api_key_is_sent_as_a_bearer_token() {
    let mock = MockBedrock::start(json!({"default": [{"ok": true}]}));
    let server = Test::new()
        .config(&format!(
            "[providers.bedrock]\nbase_url = \"{}\"\nkeys = [\"{API_KEY}@eu-west-1\"]\n",
            mock.url()
        ))
        .secret(API_KEY)
        .serve();
    let run = boto3(&server, "invoke()", MODEL);
    assert_eq!(
        run.json()["text"],
        format!("hello from {API_KEY}"),
        "{run:?}"
    );
    let request = &mock.requests()[0];
    assert_eq!(
        request["headers"]["authorization"],
        format!("Bearer {API_KEY}")
    );
    assert!(
        request["headers"].get("x-amz-date").is_none(),
        "the caller's signature went on"
    );
}

#[test]
fn without_credentials_a_bearer_key_is_byok_and_a_signature_is_refused_clearly() {
    let mock = MockBedrock::start(json!({"default": [{"ok": true}]}));
    let server = Test::new()
        .config(&format!(
            "[providers.bedrock]\nbase_url = \"{}\"\n",
            mock.url()
        ))
        .secret(API_KEY)
        .serve();
    let refused = boto3(&server, "invoke()", MODEL);
    let answer = refused.json();
    assert_eq!(
        answer["error"], "UnrecognizedClientException",
        "{refused:?}"
    );
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("cannot be forwarded"),
        "{answer}"
    );
    assert!(mock.requests().is_empty());

    let byok = run_client(
        &format!(
            "{BOTO3}\n{}",
            r#"
def bearer(request, **kwargs):
    request.headers["Authorization"] = "Bearer " + os.environ["API_KEY"]
    request.headers.pop("X-Amz-Date", None)
client.meta.events.register("before-send.bedrock-runtime.*", bearer)
invoke()
"#
        ),
        &server.url("/bedrock"),
        &[("API_KEY", API_KEY)],
    );
    assert_eq!(
        byok.json()["text"],
        format!("hello from {API_KEY}"),
        "{byok:?}"
    );
    assert_eq!(mock.requests().len(), 1, "one attempt");
    assert!(server.all_keys_available());
}

#[test]
fn with_access_tokens_boto3_presents_its_token_through_an_event_hook() {
    const TOKEN: &str = "aibridge-token-bedrock-000000000000001";
    let mock = MockBedrock::start(json!({"default": [{"ok": true}]}));
    let server = bridge_with(&mock, &format!("access_tokens = [\"{TOKEN}\"]"))
        .secret(TOKEN)
        .serve();
    let script = r#"
def token(request, **kwargs):
    if os.environ.get("TOKEN"):
        request.headers["x-aibridge-token"] = os.environ["TOKEN"]
client.meta.events.register("before-send.bedrock-runtime.*", token)
invoke()
"#;
    let without = boto3(&server, script, MODEL).json();
    assert_eq!(without["status"], 401, "{without}");
    assert!(mock.requests().is_empty());
    let with = run_client(
        &format!("{BOTO3}\n{script}"),
        &server.url("/bedrock"),
        &[("TOKEN", TOKEN)],
    );
    assert_eq!(
        with.json()["text"],
        format!("hello from {AKID1}"),
        "{with:?}"
    );
    let request = &mock.requests()[0];
    assert_eq!(request["signature_ok"], true);
    assert!(
        !request.to_string().contains(TOKEN),
        "the token went upstream"
    );

    // As Claude Code and the Anthropic client send it: the token as a bearer API key.
    let answer = crate::harness::client()
        .post(server.url(&format!("/bedrock/model/{MODEL}/invoke")))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(r#"{"max_tokens":5}"#)
        .send()
        .unwrap();
    assert_eq!(answer.status(), 200);
    let request = &mock.requests()[1];
    assert_eq!(request["who"], AKID1, "signed with the pool's credential");
    assert!(
        !request.to_string().contains(TOKEN),
        "the token went upstream"
    );
}

#[test]
fn send_puts_the_model_in_the_path_and_fails_over() {
    let mock = MockBedrock::start(json!({AKID1: [throttled()], "default": [{"ok": true}]}));
    let test = bridge_with(&mock, "");
    let output = test
        .run_with(&[
            "send",
            "--provider",
            "bedrock",
            "--model",
            MODEL,
            "-d",
            r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":5,"messages":[]}"#,
        ])
        .success()
        .stderr_has("AKIA...0001@us-east-1  429  marked cooling");
    assert!(
        output.stdout.contains(&format!("hello from {AKID2}")),
        "{output:?}"
    );
    assert_eq!(
        mock.requests()[0]["path"],
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke",
        "encoded as AWS's SDKs do"
    );
    assert!(mock.requests().iter().all(|r| r["signature_ok"] == true));
    test.run_with(&["send", "--provider", "bedrock", "-d", "{}"])
        .code(2)
        .one_line_error("bedrock names the model in the path: pass --model ID");
}

#[test]
fn probe_keys_signs_one_control_plane_call_per_credential() {
    let mock = MockBedrock::start(json!({
        AKID2: [{"error": "UnrecognizedClientException", "status": 403,
                 "message": "The security token included in the request is invalid."}],
        "default": [{"ok": true}],
    }));
    let output = bridge_with(&mock, "")
        .args([
            "probe-keys",
            "--provider",
            "bedrock",
            "--json",
            "--no-state",
        ])
        .run()
        .code(1);
    let verdicts: Vec<_> = output
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["key"].as_str().unwrap().to_owned(),
                entry["verdict"].clone(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            ("AKIA...0001@us-east-1".to_owned(), json!("valid")),
            ("ASIA...0002".to_owned(), json!("invalid")),
        ]
    );
    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(request["method"], "GET");
        assert_eq!(request["path"], "/foundation-models?byOutputModality=TEXT");
        assert_eq!(request["signature_ok"], true);
    }
}

#[test]
fn no_secret_or_caller_signature_reaches_a_log_dump_state_or_metric() {
    let mock = MockBedrock::start(json!({AKID1: [throttled()], "default": [{"ok": true}]}));
    let test = bridge_with(
        &mock,
        "request_log = \"requests.jsonl\"\ndump_dir = \"dumps\"",
    );
    let mut server = test.serve_with(&["--listen", "127.0.0.1:0", "-v"]);
    let run = boto3(&server, "invoke()", MODEL);
    assert_eq!(run.json()["text"], format!("hello from {AKID2}"), "{run:?}");
    let mut outputs = vec![
        ("stderr".to_owned(), server.stderr()),
        ("metrics".to_owned(), server.metrics()),
        ("pool".to_owned(), server.pool().to_string()),
    ];
    // Stopped, not killed: the state file is written 100 ms after a mark, or at exit.
    server.signal("TERM");
    assert_eq!(server.wait(), 0);
    outputs.push((
        "request log".to_owned(),
        std::fs::read_to_string(test.path("requests.jsonl")).unwrap(),
    ));
    outputs.push((
        "state".to_owned(),
        std::fs::read_to_string(test.state_file()).unwrap(),
    ));
    let dumps: Vec<_> = std::fs::read_dir(test.path("dumps")).unwrap().collect();
    assert_eq!(dumps.len(), 2, "both attempts dumped");
    for dump in dumps {
        let path = dump.unwrap().path();
        outputs.push((
            path.display().to_string(),
            std::fs::read_to_string(path).unwrap(),
        ));
    }
    let log = &outputs[3].1;
    assert!(log.contains(&format!("\"model\":\"{MODEL}\"")), "{log}");
    assert!(log.contains("\"route\":\"invoke\""), "{log}");
    for (name, text) in &outputs {
        for secret in MOCK_SECRETS {
            assert!(!text.contains(secret), "{name} shows a secret:\n{text}");
        }
        assert!(
            !text.contains(CALLER_AKID),
            "{name} shows the caller's key id"
        );
        assert!(
            !text.contains("Signature="),
            "{name} shows a signature:\n{text}"
        );
    }
}

#[test]
fn claude_code_in_bedrock_mode_answers_through_a_failover() {
    let Some(claude) = claude_code() else {
        // Loud: CI installs every client, so a missing one is a broken setup, not a skip.
        assert!(
            std::env::var_os("AIBRIDGE_SKIP_CLAUDE_CODE").is_some(),
            "Claude Code is not installed: run .ci/setup (it installs it with npm), or set \
             AIBRIDGE_SKIP_CLAUDE_CODE=1 to skip this test"
        );
        eprintln!("SKIPPED: Claude Code is not installed (AIBRIDGE_SKIP_CLAUDE_CODE is set)");
        return;
    };
    let mock = MockBedrock::start(json!({AKID1: [throttled()], "default": [{"ok": true}]}));
    let test = bridge_with(&mock, "");
    let server = test.serve();
    let home = test.path("claude-home");
    std::fs::create_dir_all(&home).unwrap();
    let output = std::process::Command::new(claude)
        .args(["-p", "say hi"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("CLAUDE_CODE_USE_BEDROCK", "1")
        .env("AWS_REGION", "us-east-1")
        .env("ANTHROPIC_BEDROCK_BASE_URL", server.url("/bedrock"))
        .env("CLAUDE_CODE_SKIP_BEDROCK_AUTH", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("hello from {AKID2}")),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let inference: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|request| request["method"] == "POST")
        .collect();
    assert!(inference.len() >= 2, "{inference:?}");
    assert_eq!(inference[0]["who"], AKID1);
    assert_eq!(inference[1]["who"], AKID2, "failed over");
    assert!(
        inference[1]["path"]
            .as_str()
            .unwrap()
            .ends_with("/invoke-with-response-stream")
    );
    assert!(
        mock.requests()
            .iter()
            .all(|request| request["signature_ok"] == true)
    );
}

#[test]
fn a_fleet_shares_bedrock_marks_through_redis_without_a_secret() {
    let redis = crate::harness::redis::Redis::start();
    let mock = MockBedrock::start(json!({
        AKID1: [throttled()],
        AKID2: [{"error": "ExpiredTokenException", "status": 403, "message": "expired"}],
    }));
    let server = bridge_with(&mock, &format!("redis_url = \"{}\"", redis.url())).serve();
    let answer = boto3(&server, "invoke()", MODEL).json();
    assert_eq!(answer["error"], "ThrottlingException", "{answer}");
    // Marks are written in the background.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while redis.dump().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "{:?}", redis.dump());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let stored = format!("{:?}", redis.dump());
    assert!(stored.contains("expired"), "{stored}");
    assert!(
        stored.contains("AKIA...0001@us-east-1"),
        "hints are stored: {stored}"
    );
    for secret in MOCK_SECRETS {
        assert!(!stored.contains(secret), "Redis holds a secret: {stored}");
    }
    assert!(
        !stored.contains(CALLER_AKID) && !stored.contains("Signature="),
        "{stored}"
    );
}
