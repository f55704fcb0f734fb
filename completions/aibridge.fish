# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_aibridge_global_optspecs
    string join \n config= state-file= redis-url= v/verbose q/quiet h/help V/version
end

function __fish_aibridge_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_aibridge_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_aibridge_using_subcommand
    set -l cmd (__fish_aibridge_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c aibridge -n "__fish_aibridge_needs_command" -l config -d 'Config file [default: <config dir>/aibridge/config.toml when it exists]' -r -F
complete -c aibridge -n "__fish_aibridge_needs_command" -l state-file -d 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]' -r -F
complete -c aibridge -n "__fish_aibridge_needs_command" -l redis-url -d 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]' -r
complete -c aibridge -n "__fish_aibridge_needs_command" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c aibridge -n "__fish_aibridge_needs_command" -s q -l quiet -d 'Print errors only'
complete -c aibridge -n "__fish_aibridge_needs_command" -s h -l help -d 'Print help'
complete -c aibridge -n "__fish_aibridge_needs_command" -s V -l version -d 'Print version'
complete -c aibridge -n "__fish_aibridge_needs_command" -f -a "serve" -d 'Run the local proxy: /{provider}/... forwards to the provider with key failover'
complete -c aibridge -n "__fish_aibridge_needs_command" -f -a "probe-keys" -d 'Check which keys work: one cheap request per key (a models list), no failover'
complete -c aibridge -n "__fish_aibridge_needs_command" -f -a "send" -d 'Send one request through the failover walker and report which keys were marked'
complete -c aibridge -n "__fish_aibridge_needs_command" -f -a "pool" -d 'Inspect the key pool'
complete -c aibridge -n "__fish_aibridge_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c aibridge -n "__fish_aibridge_using_subcommand serve" -l listen -d 'Address to listen on; port 0 picks a free port [default: listen from the config, else 127.0.0.1:8787]' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand serve" -l workers -d 'Request-serving threads [default: one per CPU core]' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand serve" -l config -d 'Config file [default: <config dir>/aibridge/config.toml when it exists]' -r -F
complete -c aibridge -n "__fish_aibridge_using_subcommand serve" -l state-file -d 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]' -r -F
complete -c aibridge -n "__fish_aibridge_using_subcommand serve" -l redis-url -d 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand serve" -l allow-unauthenticated -d 'Allow listening on a non-loopback address without access tokens'
complete -c aibridge -n "__fish_aibridge_using_subcommand serve" -l no-state -d 'Neither read nor write shared key health (the state file, or Redis)'
complete -c aibridge -n "__fish_aibridge_using_subcommand serve" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c aibridge -n "__fish_aibridge_using_subcommand serve" -s q -l quiet -d 'Print errors only'
complete -c aibridge -n "__fish_aibridge_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c aibridge -n "__fish_aibridge_using_subcommand serve" -s V -l version -d 'Print version'
complete -c aibridge -n "__fish_aibridge_using_subcommand probe-keys" -s p -l provider -d 'Probe only this provider\'s keys (repeatable); with --key/--keys-file, the API the keys belong to [default: anthropic]' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand probe-keys" -l keys-file -d 'Probe the keys in this file instead of the configured ones ("-" for stdin; one per line, blank lines and # comments skipped)' -r -F
complete -c aibridge -n "__fish_aibridge_using_subcommand probe-keys" -l key -d 'Probe this key instead of the configured ones (repeatable)' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand probe-keys" -l concurrency -d 'How many probes run at once' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand probe-keys" -l timeout -d 'How long each probe may take' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand probe-keys" -l config -d 'Config file [default: <config dir>/aibridge/config.toml when it exists]' -r -F
complete -c aibridge -n "__fish_aibridge_using_subcommand probe-keys" -l state-file -d 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]' -r -F
complete -c aibridge -n "__fish_aibridge_using_subcommand probe-keys" -l redis-url -d 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand probe-keys" -l json -d 'Print a JSON array instead of a table'
complete -c aibridge -n "__fish_aibridge_using_subcommand probe-keys" -l no-state -d 'Do not write the results to shared key health (the state file, or Redis)'
complete -c aibridge -n "__fish_aibridge_using_subcommand probe-keys" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c aibridge -n "__fish_aibridge_using_subcommand probe-keys" -s q -l quiet -d 'Print errors only'
complete -c aibridge -n "__fish_aibridge_using_subcommand probe-keys" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c aibridge -n "__fish_aibridge_using_subcommand probe-keys" -s V -l version -d 'Print version'
complete -c aibridge -n "__fish_aibridge_using_subcommand send" -s p -l provider -d 'Provider to send to: a provider name from the config' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand send" -s m -l model -d 'The model: for bedrock, the model id in the default path (e.g. us.anthropic.claude-sonnet-4-5-20250929-v1:0); for the others, the JSON body\'s "model", added or replaced' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand send" -s d -l data -d 'Request body: the text itself, @FILE, or @- for stdin' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand send" -s X -l request -d 'HTTP method [default: POST with a body, else GET]' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand send" -s H -l header -d 'Add a header; a credential header (authorization, x-api-key) sends the request with that key alone (bring your own key: one attempt, nothing marked)' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand send" -l key -d 'Use this key instead of the configured pool (repeat for several, first tried first)' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand send" -l keys-file -d 'Use the keys in this file instead of the configured pool (one per line, # comments)' -r -F
complete -c aibridge -n "__fish_aibridge_using_subcommand send" -l wait -d 'When every key is cooling, wait for the soonest one and retry, up to this long in total (e.g. 30s, 2m)' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand send" -l timeout -d 'How long each attempt may wait for the response to start' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand send" -l config -d 'Config file [default: <config dir>/aibridge/config.toml when it exists]' -r -F
complete -c aibridge -n "__fish_aibridge_using_subcommand send" -l state-file -d 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]' -r -F
complete -c aibridge -n "__fish_aibridge_using_subcommand send" -l redis-url -d 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand send" -l json -d 'Print one JSON object (status, outcome, attempts, body) instead of the raw body'
complete -c aibridge -n "__fish_aibridge_using_subcommand send" -l no-state -d 'Neither read nor write shared key health (the state file, or Redis)'
complete -c aibridge -n "__fish_aibridge_using_subcommand send" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c aibridge -n "__fish_aibridge_using_subcommand send" -s q -l quiet -d 'Print errors only'
complete -c aibridge -n "__fish_aibridge_using_subcommand send" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c aibridge -n "__fish_aibridge_using_subcommand send" -s V -l version -d 'Print version'
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and not __fish_seen_subcommand_from status reset help" -l config -d 'Config file [default: <config dir>/aibridge/config.toml when it exists]' -r -F
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and not __fish_seen_subcommand_from status reset help" -l state-file -d 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]' -r -F
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and not __fish_seen_subcommand_from status reset help" -l redis-url -d 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and not __fish_seen_subcommand_from status reset help" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and not __fish_seen_subcommand_from status reset help" -s q -l quiet -d 'Print errors only'
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and not __fish_seen_subcommand_from status reset help" -s h -l help -d 'Print help'
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and not __fish_seen_subcommand_from status reset help" -s V -l version -d 'Print version'
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and not __fish_seen_subcommand_from status reset help" -f -a "status" -d 'Show every key\'s state, from the running server or else shared key health'
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and not __fish_seen_subcommand_from status reset help" -f -a "reset" -d 'Clear marks (all, one provider\'s, or one key\'s) in shared key health and the running server; through Redis, on every replica'
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and not __fish_seen_subcommand_from status reset help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from status" -s p -l provider -d 'Only this provider' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from status" -l server -d 'Ask this server [default: the server on the configured listen address, if one answers within 300 ms]' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from status" -l config -d 'Config file [default: <config dir>/aibridge/config.toml when it exists]' -r -F
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from status" -l state-file -d 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]' -r -F
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from status" -l redis-url -d 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from status" -l json -d 'Print JSON (the schema of GET /_aibridge/pool)'
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from status" -s w -l watch -d 'Keep showing the table, read again every second, until Ctrl-C'
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from status" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from status" -s q -l quiet -d 'Print errors only'
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from status" -s V -l version -d 'Print version'
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from reset" -s p -l provider -d 'Only this provider\'s keys' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from reset" -l key -d 'Only this key, by masked hint (sk-a...efgh) or fingerprint' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from reset" -l server -d 'Also reset on this server [default: the server on the configured listen address, if one answers within 300 ms]' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from reset" -l config -d 'Config file [default: <config dir>/aibridge/config.toml when it exists]' -r -F
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from reset" -l state-file -d 'State file holding key marks between runs [default: state_file from the config, else <state dir>/aibridge/state.json]' -r -F
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from reset" -l redis-url -d 'Share key health through this Redis (redis://[user:password@]host:port/db, or rediss:// for TLS) instead of the state file [default: redis_url from the config]' -r
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from reset" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from reset" -s q -l quiet -d 'Print errors only'
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from reset" -s h -l help -d 'Print help'
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from reset" -s V -l version -d 'Print version'
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from help" -f -a "status" -d 'Show every key\'s state, from the running server or else shared key health'
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from help" -f -a "reset" -d 'Clear marks (all, one provider\'s, or one key\'s) in shared key health and the running server; through Redis, on every replica'
complete -c aibridge -n "__fish_aibridge_using_subcommand pool; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c aibridge -n "__fish_aibridge_using_subcommand help; and not __fish_seen_subcommand_from serve probe-keys send pool help" -f -a "serve" -d 'Run the local proxy: /{provider}/... forwards to the provider with key failover'
complete -c aibridge -n "__fish_aibridge_using_subcommand help; and not __fish_seen_subcommand_from serve probe-keys send pool help" -f -a "probe-keys" -d 'Check which keys work: one cheap request per key (a models list), no failover'
complete -c aibridge -n "__fish_aibridge_using_subcommand help; and not __fish_seen_subcommand_from serve probe-keys send pool help" -f -a "send" -d 'Send one request through the failover walker and report which keys were marked'
complete -c aibridge -n "__fish_aibridge_using_subcommand help; and not __fish_seen_subcommand_from serve probe-keys send pool help" -f -a "pool" -d 'Inspect the key pool'
complete -c aibridge -n "__fish_aibridge_using_subcommand help; and not __fish_seen_subcommand_from serve probe-keys send pool help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c aibridge -n "__fish_aibridge_using_subcommand help; and __fish_seen_subcommand_from pool" -f -a "status" -d 'Show every key\'s state, from the running server or else shared key health'
complete -c aibridge -n "__fish_aibridge_using_subcommand help; and __fish_seen_subcommand_from pool" -f -a "reset" -d 'Clear marks (all, one provider\'s, or one key\'s) in shared key health and the running server; through Redis, on every replica'
