use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse_with(text: &str, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
    parse(text, Path::new("/etc/aibridge.toml"), env)
}

fn error(text: &str) -> String {
    parse_with(text, &no_env).unwrap_err().to_string()
}

#[test]
fn defaults_give_four_builtin_providers() {
    let config = parse_with("", &no_env).unwrap();
    assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
    let names: Vec<_> = config.providers.keys().map(String::as_str).collect();
    assert_eq!(names, ["anthropic", "bedrock", "copilot", "openai"]);
    let anthropic = &config.providers["anthropic"];
    assert_eq!(anthropic.base_url, "https://api.anthropic.com");
    assert!(anthropic.keys.is_empty() && anthropic.enabled);
    assert_eq!(anthropic.pool, PoolSettings::default());
    assert_eq!(anthropic.recheck_disabled, Some(DEFAULT_RECHECK));
    let never = parse_with("[providers.anthropic]\nrecheck_disabled = \"0\"\n", &no_env).unwrap();
    assert_eq!(never.providers["anthropic"].recheck_disabled, None);
}

#[test]
fn full_provider_table() {
    let config = parse_with(
        r#"
        listen = "127.0.0.1:9000"
        state_file = "state.json"
        [providers.work]
        kind = "openai"
        base_url = "http://127.0.0.1:1234/"
        keys = ["sk-one-1234567890", "sk-two-1234567890"]
        enabled = false
        strategy = "round-robin"
        default_cooldown = "30s"
        max_cooldown = "2h"
        "#,
        &no_env,
    )
    .unwrap();
    assert_eq!(
        config.state_file.as_deref(),
        Some(Path::new("/etc/state.json"))
    );
    let work = &config.providers["work"];
    assert_eq!(work.kind, ProviderKind::OpenAi);
    assert_eq!(work.base_url, "http://127.0.0.1:1234");
    assert_eq!(work.keys.len(), 2);
    assert!(!work.enabled);
    assert_eq!(work.pool.strategy, Strategy::RoundRobin);
    assert_eq!(work.pool.default_cooldown, Duration::from_secs(30));
    assert_eq!(work.pool.max_cooldown, Duration::from_secs(7200));
}

#[test]
fn keys_files_skip_comments_after_a_key() {
    let keys: Vec<_> = parse_keys_file(
        "# pool\nsk-one-1234567890 # prod\nsk-two-1234567890\t# staging\n  # indented\nsk-th#ree-1234567890\n\n",
    )
    .map(|key| key.expose().to_owned())
    .collect();
    assert_eq!(
        keys,
        [
            "sk-one-1234567890",
            "sk-two-1234567890",
            "sk-th#ree-1234567890"
        ]
    );
}

#[test]
fn keys_with_whitespace_or_control_characters_are_refused_by_index() {
    let message =
        error("[providers.anthropic]\nkeys = [\"sk-good-1234567890\", \"sk-bad 1234567890\"]\n");
    assert_eq!(
        message,
        "provider \"anthropic\": key #2 contains whitespace or a character that is not printable ASCII"
    );
    let control = error("[providers.anthropic]\nkeys = [\"sk-bad\\u0007-1234567890\"]\n");
    assert!(control.contains("key #1 contains"), "{control}");
    let accent = error("[providers.anthropic]\nkeys = [\"sk-é-1234567890\"]\n");
    assert!(accent.contains("key #1 contains"), "{accent}");
}

#[test]
fn a_base_url_with_credentials_is_refused_without_echoing_them() {
    let message =
        error("[providers.anthropic]\nbase_url = \"http://user:hunter2secret@127.0.0.1:9\"\n");
    assert_eq!(
        message,
        format!(
            "/etc/aibridge.toml:2:12: providers.anthropic.base_url: invalid URL: {CREDENTIALS_IN_URL}"
        )
    );
    assert!(!message.contains("hunter2"));
}

#[test]
fn keys_files_that_are_not_regular_files_or_too_large_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |path: &Path| read_keys_file(path).unwrap_err().to_string();
    assert_eq!(refused(dir.path()), "not a regular file");
    assert_eq!(refused(Path::new("/dev/zero")), "not a regular file");
    let large = dir.path().join("large.txt");
    std::fs::write(&large, "k".repeat(MAX_KEYS_FILE as usize + 1)).unwrap();
    assert_eq!(refused(&large), "larger than 1.0 MiB");
    let fine = dir.path().join("keys.txt");
    std::fs::write(&fine, "sk-one-1234567890\n").unwrap();
    assert_eq!(read_keys_file(&fine).unwrap(), "sk-one-1234567890\n");
}

#[test]
fn config_errors_name_the_setting_but_never_its_value() {
    let keys = error("[providers.anthropic]\nkeys = \"sk-ant-secret-value-123456\"\n");
    assert_eq!(
        keys,
        "/etc/aibridge.toml:2:8: providers.anthropic.keys: invalid type: string, expected a sequence"
    );
    let token = error("access_tokens = \"tok-\\\"quoted\\\"-secret\"\n");
    assert!(!token.contains("secret"), "{token}");
    assert!(
        token.starts_with("/etc/aibridge.toml:1:17: access_tokens: invalid type: string,"),
        "{token}"
    );
    let element = error("access_tokens = [\"ok-token-1234567\", 5]\n");
    assert!(
        element.contains("access_tokens[1]: invalid type: integer `5`"),
        "{element}"
    );
    let syntax = error("listen = \n");
    assert!(syntax.starts_with("/etc/aibridge.toml:1:10: "), "{syntax}");
    assert_eq!(
        without_values(r#"invalid value: string "a\"b", expected x; string "c""#),
        "invalid value: string, expected x; string"
    );
}

#[test]
fn failure_model_settings() {
    let defaults = parse_with("", &no_env).unwrap();
    let anthropic = &defaults.providers["anthropic"];
    assert_eq!(anthropic.pool.cooldown_scope, CooldownScope::Model);
    assert_eq!(anthropic.pool.max_models_per_key, 64);
    assert_eq!(anthropic.max_attempts, Some(DEFAULT_MAX_ATTEMPTS));
    assert_eq!(anthropic.max_wait, DEFAULT_MAX_WAIT);
    let config = parse_with(
        r#"
        [providers.anthropic]
        cooldown_scope = "key"
        max_models_per_key = 8
        max_attempts = 0
        max_wait = "0s"
        [providers.openai]
        max_attempts = 2
        max_wait = "1m"
        "#,
        &no_env,
    )
    .unwrap();
    let anthropic = &config.providers["anthropic"];
    assert_eq!(anthropic.pool.cooldown_scope, CooldownScope::Key);
    assert_eq!(anthropic.pool.max_models_per_key, 8);
    assert_eq!(anthropic.max_attempts, None, "0 is the whole pool");
    assert_eq!(anthropic.max_wait, Duration::ZERO);
    let openai = &config.providers["openai"];
    assert_eq!(openai.max_attempts, Some(2));
    assert_eq!(openai.max_wait, Duration::from_secs(60));
    assert!(
        error("[providers.anthropic]\ncooldown_scope = \"global\"\n")
            .contains("unknown variant `global`, expected `model` or `key`")
    );
    assert_eq!(
        error("[providers.anthropic]\nmax_models_per_key = 0\n"),
        "provider \"anthropic\": max_models_per_key must be at least 1"
    );
}

#[test]
fn serve_settings() {
    let config = parse_with("", &no_env).unwrap();
    assert_eq!(config.serve.max_body_size, 32 * 1024 * 1024);
    assert_eq!(config.serve.stream_idle_timeout, Duration::from_secs(120));
    assert!(config.serve.access_tokens.is_empty());
    let config = parse_with(
        r#"
        access_tokens = ["tok-file-1234567890"]
        max_body_size = "1 MiB"
        response_timeout = "30s"
        stream_idle_timeout = "5s"
        request_log = "requests.jsonl"
        dump_dir = "/tmp/dumps"
        [providers.openai]
        byok = true
        "#,
        &no_env,
    )
    .unwrap();
    assert_eq!(config.serve.max_body_size, 1024 * 1024);
    assert_eq!(config.serve.response_timeout, Duration::from_secs(30));
    assert_eq!(
        config.serve.request_log.as_deref(),
        Some(Path::new("/etc/requests.jsonl"))
    );
    assert_eq!(
        config.serve.dump_dir.as_deref(),
        Some(Path::new("/tmp/dumps"))
    );
    assert!(config.providers["openai"].byok && !config.providers["anthropic"].byok);
    let env = |name: &str| {
        (name == "AIBRIDGE_ACCESS_TOKENS").then(|| "tok-a-1234567890,tok-b-1234567890".to_owned())
    };
    let config = parse_with("access_tokens = [\"tok-file-1234567890\"]", &env).unwrap();
    assert_eq!(config.serve.access_tokens.len(), 2);
    assert_eq!(
        error("max_body_size = 0"),
        "max_body_size: must be larger than zero"
    );
    assert_eq!(
        error("stream_idle_timeout = \"0s\""),
        "stream_idle_timeout: must be longer than zero"
    );
}

#[test]
fn env_adds_keys_and_overrides_url() {
    let env = |name: &str| match name {
        "AIBRIDGE_MY_TEAM_KEYS" => Some("sk-env-1234567890, sk-env-0987654321\n".to_owned()),
        "AIBRIDGE_MY_TEAM_BASE_URL" => Some("http://127.0.0.1:9".to_owned()),
        "TEAM_KEYS" => Some("sk-var-1234567890".to_owned()),
        _ => None,
    };
    let config = parse_with(
        r#"
        [providers.my-team]
        kind = "anthropic"
        base_url = "http://ignored.example"
        keys = ["sk-file-1234567890"]
        keys_env = "TEAM_KEYS"
        "#,
        &env,
    )
    .unwrap();
    let team = &config.providers["my-team"];
    assert_eq!(team.base_url, "http://127.0.0.1:9");
    let keys: Vec<_> = team.keys.iter().map(ApiKey::expose).collect();
    assert_eq!(
        keys,
        [
            "sk-file-1234567890",
            "sk-var-1234567890",
            "sk-env-1234567890",
            "sk-env-0987654321"
        ]
    );
}

#[test]
fn bad_toml_names_line_and_column_on_one_line() {
    let message = error("listen = \"127.0.0.1:1\"\n[providers.anthropic\n");
    assert!(message.starts_with("/etc/aibridge.toml:2:"), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

#[test]
fn unknown_field_and_kind_are_errors() {
    let message = error("[providers.anthropic]\nkeyz = []\n");
    assert!(
        message.contains("/etc/aibridge.toml:2:1") && message.contains("keyz"),
        "{message}"
    );
    let message = error("[providers.x]\nkind = \"gemini\"\n");
    assert!(
        message.contains("gemini") && message.contains(":2:"),
        "{message}"
    );
    let message = error("[providers.x]\nkeys = [\"sk-1234567890\"]\n");
    assert_eq!(
        message,
        "provider \"x\": missing `kind` (one of \"anthropic\", \"openai\", \"copilot\", \"bedrock\")"
    );
}

#[test]
fn empty_and_duplicate_keys_name_the_index_not_the_key() {
    let message = error("[providers.anthropic]\nkeys = [\"sk-secret-1234567890\", \"\"]\n");
    assert_eq!(message, "provider \"anthropic\": key #2 is empty");
    let message =
        error("[providers.openai]\nkeys = [\"sk-secret-1234567890\", \"sk-secret-1234567890\"]\n");
    assert_eq!(message, "provider \"openai\": key #2 duplicates key #1");
}

#[test]
fn bad_duration_url_and_listen() {
    let message = error("[providers.anthropic]\ndefault_cooldown = \"soon\"\n");
    assert_eq!(
        message,
        "/etc/aibridge.toml:2:20: providers.anthropic.default_cooldown: invalid value: string, expected a duration"
    );
    let message = error("[providers.anthropic]\nbase_url = \"ftp://x\"\n");
    assert!(
        message.contains("scheme must be http or https"),
        "{message}"
    );
    let message = error("listen = \"localhost\"\n");
    assert!(
        message.starts_with("/etc/aibridge.toml:1:10: listen: invalid address \"localhost\""),
        "{message}"
    );
}

#[test]
fn a_bad_value_from_a_variable_names_the_variable() {
    let env = |name: &str| (name == "AIBRIDGE_LISTEN").then(|| "nowhere".to_owned());
    let message = parse("", Path::new("/etc/aibridge.toml"), &env)
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "AIBRIDGE_LISTEN: listen: invalid address \"nowhere\": invalid socket address syntax"
    );
}

#[test]
fn a_key_pasted_anywhere_in_the_config_is_never_in_its_error() {
    const KEY: &str = "sk-ant-pasted-in-the-wrong-place-0001";
    for toml in [
        format!("[providers.anthropic]\nkeys_file = \"{KEY}\"\n"),
        format!("[providers.anthropic]\nbase_url = \"{KEY}\"\n"),
        format!("[providers.anthropic]\nbase_url = \"https://{KEY}\"\nkind = \"{KEY}\"\n"),
        format!("listen = \"{KEY}\"\n"),
        format!("[providers.anthropic]\n{KEY} = 1\n"),
        format!("{KEY} = true\n"),
        format!("[providers.anthropic]\nstrategy = \"{KEY}\"\n"),
        format!("[providers.anthropic]\ncooldown_scope = \"{KEY}\"\n"),
        format!("[providers.anthropic]\nmax_wait = \"{KEY}\"\n"),
        format!("[providers.{KEY}]\nkind = \"openai\"\n"),
        format!("redis_prefix = \"{KEY}!\"\n"),
        format!("redis_url = \"{KEY}\"\n"),
    ] {
        let message = error(&toml);
        assert!(!message.contains(KEY), "{toml}: {message}");
        assert!(!message.contains("sk-ant-pasted"), "{toml}: {message}");
        assert!(
            ["1", "2", "3"]
                .iter()
                .any(|line| message.starts_with(&format!("/etc/aibridge.toml:{line}:"))),
            "{toml}: {message}"
        );
    }
}

#[test]
fn unreadable_keys_file() {
    let message = error("[providers.anthropic]\nkeys_file = \"/nonexistent/keys.txt\"\n");
    assert!(
        message.starts_with(
            "/etc/aibridge.toml:2:13: providers.anthropic.keys_file: \
             cannot read (a value of 21 characters, not shown)"
        ),
        "{message}"
    );
}

#[test]
fn copilot_refuses_pooled_keys() {
    let message = error("[providers.copilot]\nkeys = [\"ghu_1234567890\"]\n");
    assert!(message.contains("bring-your-own-key only"), "{message}");
}

#[test]
fn keys_file_skips_blanks_and_comments() {
    let keys: Vec<_> = parse_keys_file("# team keys\n\nsk-a\n  sk-b  \n#sk-c\n").collect();
    assert_eq!(
        keys.iter().map(ApiKey::expose).collect::<Vec<_>>(),
        ["sk-a", "sk-b"]
    );
}

#[test]
fn bedrock_credentials_regions_and_endpoints() {
    let config = parse_with(
        "[providers.bedrock]\nregion = \"eu-central-1\"\n\
         keys = [\"AKIDX:hunter2hunter2@us-east-1\", \"ABSKapikey0000000000\"]\n",
        &no_env,
    )
    .unwrap();
    let bedrock = &config.providers["bedrock"];
    assert_eq!(bedrock.region.as_deref(), Some("eu-central-1"));
    assert!(
        bedrock.regional,
        "no base_url: each credential's own region"
    );
    assert_eq!(
        bedrock.base_url,
        "https://bedrock-runtime.eu-central-1.amazonaws.com"
    );
    let fixed = parse_with(
        "[providers.bedrock]\nbase_url = \"https://vpce.example\"\n",
        &no_env,
    )
    .unwrap();
    assert!(!fixed.providers["bedrock"].regional);
    assert_eq!(
        fixed.providers["bedrock"].region.as_deref(),
        Some("us-east-1")
    );

    let message = error("[providers.bedrock]\nkeys = [\"AKIDX:hunter2hunter2:tok:extra\"]\n");
    assert!(
        message.contains("key #1 is not a Bedrock credential"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    let message = error("[providers.bedrock]\nregion = \"Mars One\"\n");
    assert!(
        message.starts_with("/etc/aibridge.toml:2:10: providers.bedrock.region:"),
        "{message}"
    );
    let message = error("[providers.anthropic]\nregion = \"us-east-1\"\n");
    assert!(
        message.contains("only a bedrock provider has a region"),
        "{message}"
    );
}

#[test]
fn keys_with_caps_beside_plain_keys_and_provider_defaults() {
    let config = parse_with(
        "[providers.anthropic]\nrpm = 50\n\
         keys = [\"sk-plain-1234567890\", { key = \"sk-capped-1234567890\", max_concurrency = 4 }]\n",
        &no_env,
    )
    .unwrap();
    let anthropic = &config.providers["anthropic"];
    assert_eq!(anthropic.keys[1].expose(), "sk-capped-1234567890");
    assert_eq!(
        anthropic.key_caps,
        [
            KeyCaps {
                max_concurrency: None,
                rpm: Some(50)
            },
            KeyCaps {
                max_concurrency: Some(4),
                rpm: Some(50)
            },
        ]
    );
    let message =
        error("[providers.anthropic]\nkeys = [{ key = \"sk-secret-1234567890\", rpm = 0 }]\n");
    assert!(
        message.contains("key #1: rpm and max_concurrency must be at least 1"),
        "{message}"
    );
    let message =
        error("[providers.anthropic]\nkeys = [{ key = \"sk-secret-1234567890\", rmp = 5 }]\n");
    assert!(!message.contains("sk-secret"), "{message}");
    assert!(message.starts_with("/etc/aibridge.toml:2:"), "{message}");
}
