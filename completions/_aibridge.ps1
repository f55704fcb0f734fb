
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'aibridge' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'aibridge'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'aibridge' {
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file [default: <config dir>/aibridge/config.toml when it exists]')
            [CompletionResult]::new('--state-file', '--state-file', [CompletionResultType]::ParameterName, 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print errors only')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print errors only')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Run the local proxy: /{provider}/... forwards to the provider with key failover')
            [CompletionResult]::new('probe-keys', 'probe-keys', [CompletionResultType]::ParameterValue, 'Check which keys work: one cheap request per key (a models list), no failover')
            [CompletionResult]::new('send', 'send', [CompletionResultType]::ParameterValue, 'Send one request through the failover walker and report which keys were marked')
            [CompletionResult]::new('pool', 'pool', [CompletionResultType]::ParameterValue, 'Inspect the key pool')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'aibridge;serve' {
            [CompletionResult]::new('--listen', '--listen', [CompletionResultType]::ParameterName, 'Address to listen on; port 0 picks a free port [default: listen from the config, else 127.0.0.1:8787]')
            [CompletionResult]::new('--workers', '--workers', [CompletionResultType]::ParameterName, 'Request-serving threads [default: one per CPU core]')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file [default: <config dir>/aibridge/config.toml when it exists]')
            [CompletionResult]::new('--state-file', '--state-file', [CompletionResultType]::ParameterName, 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]')
            [CompletionResult]::new('--allow-unauthenticated', '--allow-unauthenticated', [CompletionResultType]::ParameterName, 'Allow listening on a non-loopback address without access tokens')
            [CompletionResult]::new('--no-state', '--no-state', [CompletionResultType]::ParameterName, 'Neither read nor write shared key health (the state file, or Redis)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print errors only')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print errors only')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'aibridge;probe-keys' {
            [CompletionResult]::new('-p', '-p', [CompletionResultType]::ParameterName, 'Probe only this provider''s keys (repeatable); with --key/--keys-file, the API the keys belong to [default: anthropic]')
            [CompletionResult]::new('--provider', '--provider', [CompletionResultType]::ParameterName, 'Probe only this provider''s keys (repeatable); with --key/--keys-file, the API the keys belong to [default: anthropic]')
            [CompletionResult]::new('--keys-file', '--keys-file', [CompletionResultType]::ParameterName, 'Probe the keys in this file instead of the configured ones ("-" for stdin; one per line, blank lines and # comments skipped)')
            [CompletionResult]::new('--key', '--key', [CompletionResultType]::ParameterName, 'Probe this key instead of the configured ones (repeatable)')
            [CompletionResult]::new('--concurrency', '--concurrency', [CompletionResultType]::ParameterName, 'How many probes run at once')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'How long each probe may take')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file [default: <config dir>/aibridge/config.toml when it exists]')
            [CompletionResult]::new('--state-file', '--state-file', [CompletionResultType]::ParameterName, 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print a JSON array instead of a table')
            [CompletionResult]::new('--no-state', '--no-state', [CompletionResultType]::ParameterName, 'Do not write the results to shared key health (the state file, or Redis)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print errors only')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print errors only')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'aibridge;send' {
            [CompletionResult]::new('-p', '-p', [CompletionResultType]::ParameterName, 'Provider to send to: a provider name from the config')
            [CompletionResult]::new('--provider', '--provider', [CompletionResultType]::ParameterName, 'Provider to send to: a provider name from the config')
            [CompletionResult]::new('-m', '-m', [CompletionResultType]::ParameterName, 'The model: for bedrock, the model id in the default path (e.g. us.anthropic.claude-sonnet-4-5-20250929-v1:0); for the others, the JSON body''s "model", added or replaced')
            [CompletionResult]::new('--model', '--model', [CompletionResultType]::ParameterName, 'The model: for bedrock, the model id in the default path (e.g. us.anthropic.claude-sonnet-4-5-20250929-v1:0); for the others, the JSON body''s "model", added or replaced')
            [CompletionResult]::new('-d', '-d', [CompletionResultType]::ParameterName, 'Request body: the text itself, @FILE, or @- for stdin')
            [CompletionResult]::new('--data', '--data', [CompletionResultType]::ParameterName, 'Request body: the text itself, @FILE, or @- for stdin')
            [CompletionResult]::new('-X', '-X ', [CompletionResultType]::ParameterName, 'HTTP method [default: POST with a body, else GET]')
            [CompletionResult]::new('--request', '--request', [CompletionResultType]::ParameterName, 'HTTP method [default: POST with a body, else GET]')
            [CompletionResult]::new('-H', '-H ', [CompletionResultType]::ParameterName, 'Add a header; a credential header (authorization, x-api-key) sends the request with that key alone (bring your own key: one attempt, nothing marked)')
            [CompletionResult]::new('--header', '--header', [CompletionResultType]::ParameterName, 'Add a header; a credential header (authorization, x-api-key) sends the request with that key alone (bring your own key: one attempt, nothing marked)')
            [CompletionResult]::new('--key', '--key', [CompletionResultType]::ParameterName, 'Use this key instead of the configured pool (repeat for several, first tried first)')
            [CompletionResult]::new('--keys-file', '--keys-file', [CompletionResultType]::ParameterName, 'Use the keys in this file instead of the configured pool (one per line, # comments)')
            [CompletionResult]::new('--wait', '--wait', [CompletionResultType]::ParameterName, 'When every key is cooling, wait for the soonest one and retry, up to this long in total (e.g. 30s, 2m)')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'How long each attempt may wait for the response to start')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file [default: <config dir>/aibridge/config.toml when it exists]')
            [CompletionResult]::new('--state-file', '--state-file', [CompletionResultType]::ParameterName, 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON object (status, outcome, attempts, body) instead of the raw body')
            [CompletionResult]::new('--no-state', '--no-state', [CompletionResultType]::ParameterName, 'Neither read nor write shared key health (the state file, or Redis)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print errors only')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print errors only')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'aibridge;pool' {
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file [default: <config dir>/aibridge/config.toml when it exists]')
            [CompletionResult]::new('--state-file', '--state-file', [CompletionResultType]::ParameterName, 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print errors only')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print errors only')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('status', 'status', [CompletionResultType]::ParameterValue, 'Show every key''s state, from the running server or else shared key health')
            [CompletionResult]::new('reset', 'reset', [CompletionResultType]::ParameterValue, 'Clear marks (all, one provider''s, or one key''s) in shared key health and the running server; through Redis, on every replica')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'aibridge;pool;status' {
            [CompletionResult]::new('-p', '-p', [CompletionResultType]::ParameterName, 'Only this provider')
            [CompletionResult]::new('--provider', '--provider', [CompletionResultType]::ParameterName, 'Only this provider')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Ask this server [default: the server on the configured listen address, if one answers within 300 ms]')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file [default: <config dir>/aibridge/config.toml when it exists]')
            [CompletionResult]::new('--state-file', '--state-file', [CompletionResultType]::ParameterName, 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON (the schema of GET /_aibridge/pool)')
            [CompletionResult]::new('-w', '-w', [CompletionResultType]::ParameterName, 'Keep showing the table, read again every second, until Ctrl-C')
            [CompletionResult]::new('--watch', '--watch', [CompletionResultType]::ParameterName, 'Keep showing the table, read again every second, until Ctrl-C')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print errors only')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print errors only')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'aibridge;pool;reset' {
            [CompletionResult]::new('-p', '-p', [CompletionResultType]::ParameterName, 'Only this provider''s keys')
            [CompletionResult]::new('--provider', '--provider', [CompletionResultType]::ParameterName, 'Only this provider''s keys')
            [CompletionResult]::new('--key', '--key', [CompletionResultType]::ParameterName, 'Only this key, by masked hint (sk-a...efgh) or fingerprint')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Also reset on this server [default: the server on the configured listen address, if one answers within 300 ms]')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file [default: <config dir>/aibridge/config.toml when it exists]')
            [CompletionResult]::new('--state-file', '--state-file', [CompletionResultType]::ParameterName, 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print errors only')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print errors only')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'aibridge;pool;help' {
            [CompletionResult]::new('status', 'status', [CompletionResultType]::ParameterValue, 'Show every key''s state, from the running server or else shared key health')
            [CompletionResult]::new('reset', 'reset', [CompletionResultType]::ParameterValue, 'Clear marks (all, one provider''s, or one key''s) in shared key health and the running server; through Redis, on every replica')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'aibridge;pool;help;status' {
            break
        }
        'aibridge;pool;help;reset' {
            break
        }
        'aibridge;pool;help;help' {
            break
        }
        'aibridge;help' {
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Run the local proxy: /{provider}/... forwards to the provider with key failover')
            [CompletionResult]::new('probe-keys', 'probe-keys', [CompletionResultType]::ParameterValue, 'Check which keys work: one cheap request per key (a models list), no failover')
            [CompletionResult]::new('send', 'send', [CompletionResultType]::ParameterValue, 'Send one request through the failover walker and report which keys were marked')
            [CompletionResult]::new('pool', 'pool', [CompletionResultType]::ParameterValue, 'Inspect the key pool')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'aibridge;help;serve' {
            break
        }
        'aibridge;help;probe-keys' {
            break
        }
        'aibridge;help;send' {
            break
        }
        'aibridge;help;pool' {
            [CompletionResult]::new('status', 'status', [CompletionResultType]::ParameterValue, 'Show every key''s state, from the running server or else shared key health')
            [CompletionResult]::new('reset', 'reset', [CompletionResultType]::ParameterValue, 'Clear marks (all, one provider''s, or one key''s) in shared key health and the running server; through Redis, on every replica')
            break
        }
        'aibridge;help;pool;status' {
            break
        }
        'aibridge;help;pool;reset' {
            break
        }
        'aibridge;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
