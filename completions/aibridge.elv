
use builtin;
use str;

set edit:completion:arg-completer[aibridge] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'aibridge'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'aibridge'= {
            cand --config 'Config file [default: <config dir>/aibridge/config.toml when it exists]'
            cand --state-file 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]'
            cand --redis-url 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]'
            cand -v 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
            cand --verbose 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
            cand -q 'Print errors only'
            cand --quiet 'Print errors only'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
            cand serve 'Run the local proxy: /{provider}/... forwards to the provider with key failover'
            cand probe-keys 'Check which keys work: one cheap request per key (a models list), no failover'
            cand send 'Send one request through the failover walker and report which keys were marked'
            cand pool 'Inspect the key pool'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'aibridge;serve'= {
            cand --listen 'Address to listen on; port 0 picks a free port [default: listen from the config, else 127.0.0.1:8787]'
            cand --workers 'Request-serving threads [default: one per CPU core]'
            cand --config 'Config file [default: <config dir>/aibridge/config.toml when it exists]'
            cand --state-file 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]'
            cand --redis-url 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]'
            cand --allow-unauthenticated 'Allow listening on a non-loopback address without access tokens'
            cand --no-state 'Neither read nor write shared key health (the state file, or Redis)'
            cand -v 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
            cand --verbose 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
            cand -q 'Print errors only'
            cand --quiet 'Print errors only'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'aibridge;probe-keys'= {
            cand -p 'Probe only this provider''s keys (repeatable); with --key/--keys-file, the API the keys belong to [default: anthropic]'
            cand --provider 'Probe only this provider''s keys (repeatable); with --key/--keys-file, the API the keys belong to [default: anthropic]'
            cand --keys-file 'Probe the keys in this file instead of the configured ones ("-" for stdin; one per line, blank lines and # comments skipped)'
            cand --key 'Probe this key instead of the configured ones (repeatable)'
            cand --concurrency 'How many probes run at once'
            cand --timeout 'How long each probe may take'
            cand --config 'Config file [default: <config dir>/aibridge/config.toml when it exists]'
            cand --state-file 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]'
            cand --redis-url 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]'
            cand --json 'Print a JSON array instead of a table'
            cand --no-state 'Do not write the results to shared key health (the state file, or Redis)'
            cand -v 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
            cand --verbose 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
            cand -q 'Print errors only'
            cand --quiet 'Print errors only'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'aibridge;send'= {
            cand -p 'Provider to send to: a provider name from the config'
            cand --provider 'Provider to send to: a provider name from the config'
            cand -m 'The model: for bedrock, the model id in the default path (e.g. us.anthropic.claude-sonnet-4-5-20250929-v1:0); for the others, the JSON body''s "model", added or replaced'
            cand --model 'The model: for bedrock, the model id in the default path (e.g. us.anthropic.claude-sonnet-4-5-20250929-v1:0); for the others, the JSON body''s "model", added or replaced'
            cand -d 'Request body: the text itself, @FILE, or @- for stdin'
            cand --data 'Request body: the text itself, @FILE, or @- for stdin'
            cand -X 'HTTP method [default: POST with a body, else GET]'
            cand --request 'HTTP method [default: POST with a body, else GET]'
            cand -H 'Add a header; a credential header (authorization, x-api-key) sends the request with that key alone (bring your own key: one attempt, nothing marked)'
            cand --header 'Add a header; a credential header (authorization, x-api-key) sends the request with that key alone (bring your own key: one attempt, nothing marked)'
            cand --key 'Use this key instead of the configured pool (repeat for several, first tried first)'
            cand --keys-file 'Use the keys in this file instead of the configured pool (one per line, # comments)'
            cand --wait 'When every key is cooling, wait for the soonest one and retry, up to this long in total (e.g. 30s, 2m)'
            cand --timeout 'How long each attempt may wait for the response to start'
            cand --config 'Config file [default: <config dir>/aibridge/config.toml when it exists]'
            cand --state-file 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]'
            cand --redis-url 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]'
            cand --json 'Print one JSON object (status, outcome, attempts, body) instead of the raw body'
            cand --no-state 'Neither read nor write shared key health (the state file, or Redis)'
            cand -v 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
            cand --verbose 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
            cand -q 'Print errors only'
            cand --quiet 'Print errors only'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'aibridge;pool'= {
            cand --config 'Config file [default: <config dir>/aibridge/config.toml when it exists]'
            cand --state-file 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]'
            cand --redis-url 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]'
            cand -v 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
            cand --verbose 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
            cand -q 'Print errors only'
            cand --quiet 'Print errors only'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
            cand status 'Show every key''s state, from the running server or else shared key health'
            cand reset 'Clear marks (all, one provider''s, or one key''s) in shared key health and the running server; through Redis, on every replica'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'aibridge;pool;status'= {
            cand -p 'Only this provider'
            cand --provider 'Only this provider'
            cand --server 'Ask this server [default: the server on the configured listen address, if one answers within 300 ms]'
            cand --config 'Config file [default: <config dir>/aibridge/config.toml when it exists]'
            cand --state-file 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]'
            cand --redis-url 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]'
            cand --json 'Print JSON (the schema of GET /_aibridge/pool)'
            cand -w 'Keep showing the table, read again every second, until Ctrl-C'
            cand --watch 'Keep showing the table, read again every second, until Ctrl-C'
            cand -v 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
            cand --verbose 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
            cand -q 'Print errors only'
            cand --quiet 'Print errors only'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'aibridge;pool;reset'= {
            cand -p 'Only this provider''s keys'
            cand --provider 'Only this provider''s keys'
            cand --key 'Only this key, by masked hint (sk-a...efgh) or fingerprint'
            cand --server 'Also reset on this server [default: the server on the configured listen address, if one answers within 300 ms]'
            cand --config 'Config file [default: <config dir>/aibridge/config.toml when it exists]'
            cand --state-file 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]'
            cand --redis-url 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]'
            cand -v 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
            cand --verbose 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
            cand -q 'Print errors only'
            cand --quiet 'Print errors only'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'aibridge;pool;help'= {
            cand status 'Show every key''s state, from the running server or else shared key health'
            cand reset 'Clear marks (all, one provider''s, or one key''s) in shared key health and the running server; through Redis, on every replica'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'aibridge;pool;help;status'= {
        }
        &'aibridge;pool;help;reset'= {
        }
        &'aibridge;pool;help;help'= {
        }
        &'aibridge;help'= {
            cand serve 'Run the local proxy: /{provider}/... forwards to the provider with key failover'
            cand probe-keys 'Check which keys work: one cheap request per key (a models list), no failover'
            cand send 'Send one request through the failover walker and report which keys were marked'
            cand pool 'Inspect the key pool'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'aibridge;help;serve'= {
        }
        &'aibridge;help;probe-keys'= {
        }
        &'aibridge;help;send'= {
        }
        &'aibridge;help;pool'= {
            cand status 'Show every key''s state, from the running server or else shared key health'
            cand reset 'Clear marks (all, one provider''s, or one key''s) in shared key health and the running server; through Redis, on every replica'
        }
        &'aibridge;help;pool;status'= {
        }
        &'aibridge;help;pool;reset'= {
        }
        &'aibridge;help;help'= {
        }
    ]
    $completions[$command]
}
