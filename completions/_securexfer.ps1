
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'securexfer' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'securexfer'
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
        'securexfer' {
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Run the storage server')
            [CompletionResult]::new('register', 'register', [CompletionResultType]::ParameterValue, 'Make a key pair, register a name with a server and save the identity')
            [CompletionResult]::new('send', 'send', [CompletionResultType]::ParameterValue, 'Send files to a server and verify them (registers first if there is no identity)')
            [CompletionResult]::new('ls', 'ls', [CompletionResultType]::ParameterValue, 'List this client''s files on a server (protocol 4): size, when stored, BLAKE3 (the first 16 hex digits) and kept versions, in byte order of their names')
            [CompletionResult]::new('get', 'get', [CompletionResultType]::ParameterValue, 'Download stored files (protocol 4). Each is written to .NAME.securexfer-partial in the target directory and takes its name only once its BLAKE3 matches the server''s; a download cut off leaves that file, and the same get continues it')
            [CompletionResult]::new('rm', 'rm', [CompletionResultType]::ParameterValue, 'Remove stored files from a server (protocol 4). The server keeps a removed copy as a version, as it keeps a replaced one (serve --keep-versions)')
            [CompletionResult]::new('db', 'db', [CompletionResultType]::ParameterValue, 'Read the server''s database')
            [CompletionResult]::new('trust', 'trust', [CompletionResultType]::ParameterValue, 'Check which key a server presents over protocol 4 (TLS 1.3) and trust it: on first contact the key is trusted and saved in known_servers; later, a different key is a hard failure (exit 8). With --fingerprint, only that key is accepted (and saved)')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print the completion script for a shell on stdout')
            [CompletionResult]::new('man', 'man', [CompletionResultType]::ParameterValue, 'Write the man pages (one per command) into a directory')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'securexfer;serve' {
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Configuration file (default /etc/securexfer/serve.toml, if it exists): keys are the long flags (`max-file-size = "8G"`). Flags and SECUREXFER_* variables win over it')
            [CompletionResult]::new('--listen', '--listen', [CompletionResultType]::ParameterName, 'Address to listen on. The default accepts only this machine; use 0.0.0.0 (or ::) to accept remote clients')
            [CompletionResult]::new('--port', '--port', [CompletionResultType]::ParameterName, 'Port to listen on (0 picks a free one, printed at start-up)')
            [CompletionResult]::new('--storage', '--storage', [CompletionResultType]::ParameterName, 'Directory where received files are stored, one subdirectory per client id; or an S3-compatible object store that several servers share, as s3://BUCKET/PREFIX (endpoint, region and keys from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; plain http only on loopback or with AWS_ALLOW_HTTP=true)')
            [CompletionResult]::new('--db', '--db', [CompletionResultType]::ParameterName, 'SQLite database of clients and files; or a PostgreSQL database that several servers share, as postgres://USER:PASSWORD@HOST:PORT/DB (no TLS to it yet: loopback or a private network)')
            [CompletionResult]::new('--max-file-size', '--max-file-size', [CompletionResultType]::ParameterName, 'Largest file accepted (encrypted size; suffixes K, M, G). Larger uploads are refused before anything is read. The protocol''s own limit is 4G minus 16 bytes')
            [CompletionResult]::new('--max-connections', '--max-connections', [CompletionResultType]::ParameterName, 'Most simultaneous connections. When full, the oldest idle connection that never made a key exchange is closed to make room; without one, newcomers wait')
            [CompletionResult]::new('--max-connections-per-address', '--max-connections-per-address', [CompletionResultType]::ParameterName, 'Most connections one IP address may hold at once; more are closed at once. 0: no cap')
            [CompletionResult]::new('--request-deadline', '--request-deadline', [CompletionResultType]::ParameterName, 'Seconds a client gets for a whole request header and fixed-size payload, from its first byte (file content is not included); slower peers are disconnected')
            [CompletionResult]::new('--max-uploads', '--max-uploads', [CompletionResultType]::ParameterName, 'Most uploads whose content is being read at once; a 1028 beyond gets 2107 before its content is read. Each must also average 64 KiB/s after an idle timeout''s grace')
            [CompletionResult]::new('--idle-timeout', '--idle-timeout', [CompletionResultType]::ParameterName, 'Seconds a client may stay silent, between requests or in the middle of one')
            [CompletionResult]::new('--session-window', '--session-window', [CompletionResultType]::ParameterName, 'Seconds after a key exchange during which a client that opens one connection per request may send and confirm files from the same IP address')
            [CompletionResult]::new('--grace', '--grace', [CompletionResultType]::ParameterName, 'Seconds transfers in flight may run on after SIGINT or SIGTERM')
            [CompletionResult]::new('--disk-reserve', '--disk-reserve', [CompletionResultType]::ParameterName, 'Free space to keep on the storage file system; uploads that would eat into it are refused (suffixes K, M, G)')
            [CompletionResult]::new('--compat', '--compat', [CompletionResultType]::ParameterName, 'Serve an existing client that deviates from the protocol. `crc32-ciphertext`: to clients whose requests carry version byte 1 (the `dor` client; nobody else sends it), answer 1028 with the zlib CRC-32 of the ciphertext received, as that client checks, and answer its 1030 with 2104, as it waits for one. Every other client gets exactly the protocol')
            [CompletionResult]::new('--registrations-per-minute', '--registrations-per-minute', [CompletionResultType]::ParameterName, 'Registrations one IP address (IPv6: one /64) may make per minute, in bursts of up to twice as many; more get 2107. 0 turns the limit off')
            [CompletionResult]::new('--keep-versions', '--keep-versions', [CompletionResultType]::ParameterName, 'Earlier versions kept of each stored file when a newer confirmed upload of the same name replaces it (under DIR/.versions/; `db inspect` lists them, `db restore` puts one back). 0 keeps none')
            [CompletionResult]::new('--resume-window', '--resume-window', [CompletionResultType]::ParameterName, 'How long a protocol-4 upload of known size that its connection left unfinished (network drop, killed client, server restart) is kept for `send` to resume where it stopped; 0 keeps none. In an object store, the parts sent so far are kept, and any instance over the same records can resume them')
            [CompletionResult]::new('--registration', '--registration', [CompletionResultType]::ParameterName, 'Who may register: `open` (anyone, as protocol 3 always did), `token` (protocol 4 clients with an invitation from `securexfer db invite`), `closed` (nobody). Under token and closed, protocol 3''s registration (1025) gets 2107: it cannot carry a token. Registered clients, and upgrades of protocol-3 clients, work under all three')
            [CompletionResult]::new('--metrics', '--metrics', [CompletionResultType]::ParameterName, 'Serve metrics in the Prometheus text format on http://ADDR/metrics (for example 127.0.0.1:9357; port 0 picks a free one, logged at start-up): connections, requests by code and outcome, refusals by reason, bytes received, uploads by outcome and their duration, sessions, free disk space, database latency. The endpoint has no authentication: keep it on loopback or a monitoring network')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'How log lines are written to stderr: `text` for people, `json` (one object per line) for log collectors')
            [CompletionResult]::new('--strict-sessions', '--strict-sessions', [CompletionResultType]::ParameterName, 'Serve file requests only on the connection that made the key exchange (refuses clients that open one connection per request)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log warnings and errors only (-q), or more detail (-v: debug, -vv: trace). Without them, RUST_LOG sets what is logged (default: info)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log warnings and errors only (-q), or more detail (-v: debug, -vv: trace). Without them, RUST_LOG sets what is logged (default: info)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Log warnings and errors only')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Log warnings and errors only')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'securexfer;register' {
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Configuration file (default $XDG_CONFIG_HOME/securexfer/config.toml, if it exists): keys are the long flags (`server = "files.example.org"`). Flags and SECUREXFER_* variables win over it')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server address as HOST:PORT; the port defaults to 1357. Default: line 1 of transfer.info, else the server of the latest `register`')
            [CompletionResult]::new('--name', '--name', [CompletionResultType]::ParameterName, 'Client name to register (default: line 2 of transfer.info)')
            [CompletionResult]::new('--identity', '--identity', [CompletionResultType]::ParameterName, 'The identity file (me.info; priv.key is kept beside it). Default: me.info in the working directory if there is one (the existing client''s), else this server''s identity in $XDG_CONFIG_HOME/securexfer/servers/HOST_PORT/ (~/.config/securexfer)')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'Seconds to wait for a connection')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Seconds to wait for the server on each read or write')
            [CompletionResult]::new('--protocol', '--protocol', [CompletionResultType]::ParameterName, 'Which protocol to speak. `auto` opens with protocol 4 (TLS 1.3, the server''s key checked against known_servers) and falls back to protocol 3, with a warning, only for a server never seen speaking 4 that does not speak it. `3` is refused (exit 8) for a server known to speak 4; `4` never falls back')
            [CompletionResult]::new('--server-fingerprint', '--server-fingerprint', [CompletionResultType]::ParameterName, 'The key the server must present over protocol 4, as `securexfer db fingerprint` shows it on the server (SHA256:...): pins it before the first contact. With a key already in known_servers, the two must agree')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'The invitation token the server''s operator gave (`securexfer db invite`), for a server whose registration policy is `token` (protocol 4): sxi- and 26 characters')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged')
            [CompletionResult]::new('--force', '--force', [CompletionResultType]::ParameterName, 'Replace an existing identity (the old one is kept as me.info.bak)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print nothing on success')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print nothing on success')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'securexfer;send' {
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Configuration file (default $XDG_CONFIG_HOME/securexfer/config.toml, if it exists): keys are the long flags (`server = "files.example.org"`). Flags and SECUREXFER_* variables win over it')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server address as HOST:PORT; the port defaults to 1357. Default: line 1 of transfer.info, else the server of the latest `register`')
            [CompletionResult]::new('--name', '--name', [CompletionResultType]::ParameterName, 'Client name to register (default: line 2 of transfer.info)')
            [CompletionResult]::new('--identity', '--identity', [CompletionResultType]::ParameterName, 'The identity file (me.info; priv.key is kept beside it). Default: me.info in the working directory if there is one (the existing client''s), else this server''s identity in $XDG_CONFIG_HOME/securexfer/servers/HOST_PORT/ (~/.config/securexfer)')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'Seconds to wait for a connection')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Seconds to wait for the server on each read or write')
            [CompletionResult]::new('--protocol', '--protocol', [CompletionResultType]::ParameterName, 'Which protocol to speak. `auto` opens with protocol 4 (TLS 1.3, the server''s key checked against known_servers) and falls back to protocol 3, with a warning, only for a server never seen speaking 4 that does not speak it. `3` is refused (exit 8) for a server known to speak 4; `4` never falls back')
            [CompletionResult]::new('--server-fingerprint', '--server-fingerprint', [CompletionResultType]::ParameterName, 'The key the server must present over protocol 4, as `securexfer db fingerprint` shows it on the server (SHA256:...): pins it before the first contact. With a key already in known_servers, the two must agree')
            [CompletionResult]::new('--as', '--as', [CompletionResultType]::ParameterName, 'The name to store the file under, instead of its own (one FILE only). Names are up to 254 bytes of printable ASCII. With -r, the name of the stored folder instead of the DIR''s own (one DIR only)')
            [CompletionResult]::new('--limit-rate', '--limit-rate', [CompletionResultType]::ParameterName, 'Send file content at most RATE bytes per second, as curl''s --limit-rate: a number with an optional K, M or G (binary units), e.g. 500K or 10M. Both protocols')
            [CompletionResult]::new('--parallel', '--parallel', [CompletionResultType]::ParameterName, 'Send over N connections at once, each taking the next file (or the next run of small files) as it is free; the bars show the whole run. Protocol 4 only. With --limit-rate, the rate is shared among them')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'No progress bar and no summary lines (errors are still printed)')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'No progress bar and no summary lines (errors are still printed)')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON object per file on stdout, in argument order, then a summary object (the schema is in docs/json.md)')
            [CompletionResult]::new('-r', '-r', [CompletionResultType]::ParameterName, 'Send folders: every regular file under each DIR, stored as DIR''s name and its path below it. Symbolic links and special files are skipped with a note (never followed), empty folders too. Protocol 4 only')
            [CompletionResult]::new('--recursive', '--recursive', [CompletionResultType]::ParameterName, 'Send folders: every regular file under each DIR, stored as DIR''s name and its path below it. Symbolic links and special files are skipped with a note (never followed), empty folders too. Protocol 4 only')
            [CompletionResult]::new('--dry-run', '--dry-run', [CompletionResultType]::ParameterName, 'Send nothing: print what would be sent, which stored files it would replace and what the server would refuse: a file/folder conflict, --no-clobber, the quota (with --json, one object per file). Protocol 4 only (protocol 3 cannot list what is stored)')
            [CompletionResult]::new('--no-clobber', '--no-clobber', [CompletionResultType]::ParameterName, 'Never replace a stored file: a file whose name is taken on the server is refused (reported, exit 4) and the others are sent. Protocol 4 only')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'securexfer;ls' {
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Configuration file (default $XDG_CONFIG_HOME/securexfer/config.toml, if it exists): keys are the long flags (`server = "files.example.org"`). Flags and SECUREXFER_* variables win over it')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server address as HOST:PORT; the port defaults to 1357. Default: line 1 of transfer.info, else the server of the latest `register`')
            [CompletionResult]::new('--name', '--name', [CompletionResultType]::ParameterName, 'Client name to register (default: line 2 of transfer.info)')
            [CompletionResult]::new('--identity', '--identity', [CompletionResultType]::ParameterName, 'The identity file (me.info; priv.key is kept beside it). Default: me.info in the working directory if there is one (the existing client''s), else this server''s identity in $XDG_CONFIG_HOME/securexfer/servers/HOST_PORT/ (~/.config/securexfer)')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'Seconds to wait for a connection')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Seconds to wait for the server on each read or write')
            [CompletionResult]::new('--protocol', '--protocol', [CompletionResultType]::ParameterName, 'Which protocol to speak. `auto` opens with protocol 4 (TLS 1.3, the server''s key checked against known_servers) and falls back to protocol 3, with a warning, only for a server never seen speaking 4 that does not speak it. `3` is refused (exit 8) for a server known to speak 4; `4` never falls back')
            [CompletionResult]::new('--server-fingerprint', '--server-fingerprint', [CompletionResultType]::ParameterName, 'The key the server must present over protocol 4, as `securexfer db fingerprint` shows it on the server (SHA256:...): pins it before the first contact. With a key already in known_servers, the two must agree')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged')
            [CompletionResult]::new('--bytes', '--bytes', [CompletionResultType]::ParameterName, 'Print sizes as byte counts, not in binary units (1.5 MiB)')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON object per file on stdout, then a summary object (docs/json.md)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print nothing but errors (the exit code says whether every pattern matched)')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print nothing but errors (the exit code says whether every pattern matched)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'securexfer;get' {
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Where to write them: a directory that exists, or - for stdout')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Where to write them: a directory that exists, or - for stdout')
            [CompletionResult]::new('--limit-rate', '--limit-rate', [CompletionResultType]::ParameterName, 'Receive file content at most RATE bytes per second, as curl''s --limit-rate: a number with an optional K, M or G (binary units), e.g. 500K or 10M')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Configuration file (default $XDG_CONFIG_HOME/securexfer/config.toml, if it exists): keys are the long flags (`server = "files.example.org"`). Flags and SECUREXFER_* variables win over it')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server address as HOST:PORT; the port defaults to 1357. Default: line 1 of transfer.info, else the server of the latest `register`')
            [CompletionResult]::new('--name', '--name', [CompletionResultType]::ParameterName, 'Client name to register (default: line 2 of transfer.info)')
            [CompletionResult]::new('--identity', '--identity', [CompletionResultType]::ParameterName, 'The identity file (me.info; priv.key is kept beside it). Default: me.info in the working directory if there is one (the existing client''s), else this server''s identity in $XDG_CONFIG_HOME/securexfer/servers/HOST_PORT/ (~/.config/securexfer)')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'Seconds to wait for a connection')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Seconds to wait for the server on each read or write')
            [CompletionResult]::new('--protocol', '--protocol', [CompletionResultType]::ParameterName, 'Which protocol to speak. `auto` opens with protocol 4 (TLS 1.3, the server''s key checked against known_servers) and falls back to protocol 3, with a warning, only for a server never seen speaking 4 that does not speak it. `3` is refused (exit 8) for a server known to speak 4; `4` never falls back')
            [CompletionResult]::new('--server-fingerprint', '--server-fingerprint', [CompletionResultType]::ParameterName, 'The key the server must present over protocol 4, as `securexfer db fingerprint` shows it on the server (SHA256:...): pins it before the first contact. With a key already in known_servers, the two must agree')
            [CompletionResult]::new('-r', '-r', [CompletionResultType]::ParameterName, 'Download folders: every file under each NAME (a NAME that is a file is that file)')
            [CompletionResult]::new('--recursive', '--recursive', [CompletionResultType]::ParameterName, 'Download folders: every file under each NAME (a NAME that is a file is that file)')
            [CompletionResult]::new('--force', '--force', [CompletionResultType]::ParameterName, 'Replace a local file of the same name')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON object per file on stdout (stderr with -o -), then a summary object (docs/json.md)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print nothing but errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print nothing but errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'securexfer;rm' {
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Configuration file (default $XDG_CONFIG_HOME/securexfer/config.toml, if it exists): keys are the long flags (`server = "files.example.org"`). Flags and SECUREXFER_* variables win over it')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server address as HOST:PORT; the port defaults to 1357. Default: line 1 of transfer.info, else the server of the latest `register`')
            [CompletionResult]::new('--name', '--name', [CompletionResultType]::ParameterName, 'Client name to register (default: line 2 of transfer.info)')
            [CompletionResult]::new('--identity', '--identity', [CompletionResultType]::ParameterName, 'The identity file (me.info; priv.key is kept beside it). Default: me.info in the working directory if there is one (the existing client''s), else this server''s identity in $XDG_CONFIG_HOME/securexfer/servers/HOST_PORT/ (~/.config/securexfer)')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'Seconds to wait for a connection')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Seconds to wait for the server on each read or write')
            [CompletionResult]::new('--protocol', '--protocol', [CompletionResultType]::ParameterName, 'Which protocol to speak. `auto` opens with protocol 4 (TLS 1.3, the server''s key checked against known_servers) and falls back to protocol 3, with a warning, only for a server never seen speaking 4 that does not speak it. `3` is refused (exit 8) for a server known to speak 4; `4` never falls back')
            [CompletionResult]::new('--server-fingerprint', '--server-fingerprint', [CompletionResultType]::ParameterName, 'The key the server must present over protocol 4, as `securexfer db fingerprint` shows it on the server (SHA256:...): pins it before the first contact. With a key already in known_servers, the two must agree')
            [CompletionResult]::new('-r', '-r', [CompletionResultType]::ParameterName, 'Remove folders: every file under each NAME, each kept as a version as a single rm keeps one (a NAME that is a file is that file)')
            [CompletionResult]::new('--recursive', '--recursive', [CompletionResultType]::ParameterName, 'Remove folders: every file under each NAME, each kept as a version as a single rm keeps one (a NAME that is a file is that file)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON object per file on stdout, then a summary object (docs/json.md)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print nothing but errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print nothing but errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'securexfer;db' {
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('inspect', 'inspect', [CompletionResultType]::ParameterValue, 'Show clients, files and kept versions, read-only (safe while the server runs), from a SQLite file or a postgres:// address, checking each file against a local storage directory or an s3:// object store (listed, never written). Sizes are in binary units (--bytes for byte counts); on a terminal, long names are cut with an ellipsis to fit its width (never in a pipe or a file)')
            [CompletionResult]::new('verify', 'verify', [CompletionResultType]::ParameterValue, 'Re-read every stored file and kept version and check it against its record (size and cksum): reports missing, changed and unrecorded files. Read-only. Exit 5 if any')
            [CompletionResult]::new('restore', 'restore', [CompletionResultType]::ParameterValue, 'Put an earlier version of a stored file back; the current one becomes a version in turn. Run it with the server stopped (it refuses while one holds the storage)')
            [CompletionResult]::new('fingerprint', 'fingerprint', [CompletionResultType]::ParameterValue, 'Print the fingerprint of the server''s key (`SHA256:...`, kept in DB.key beside the database, or in a PostgreSQL database itself), for clients to pin before their first contact. Exit 6 if there is no key yet (`serve` makes it at its first start)')
            [CompletionResult]::new('invite', 'invite', [CompletionResultType]::ParameterValue, 'Make an invitation for `serve --registration token`: prints a single-use token (`sxi-` and 26 characters) for one protocol-4 client to register with. The database keeps only its SHA-256, its name and expiry, and when and by whom it was used')
            [CompletionResult]::new('quota', 'quota', [CompletionResultType]::ParameterValue, 'Show or set a client''s quota: the bytes its files, kept versions and open uploads may take and how many files it may store. Checked by protocol 4 before any content of an upload is accepted (protocol 3 uploads are not counted against it). Safe while the server runs; new uploads see a change at once')
            [CompletionResult]::new('migrate', 'migrate', [CompletionResultType]::ParameterValue, 'Move a single machine''s records and files to PostgreSQL and an object store (the configuration of many `serve` instances): every client, key, quota, invitation, file and kept version, each file hashed on the way and read back from the store. Safe while the server runs, and re-runnable: a second run moves only what is not there yet as the source has it. Exit 5 if a file is not what its record says')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'securexfer;db;inspect' {
            [CompletionResult]::new('--db', '--db', [CompletionResultType]::ParameterName, 'The server''s database: a SQLite file, or postgres://USER:PASSWORD@HOST:PORT/DB (only read: its schema must be this version''s, which `serve` migrates to)')
            [CompletionResult]::new('--storage', '--storage', [CompletionResultType]::ParameterName, 'Storage directory, or s3://BUCKET/PREFIX (endpoint and credentials from the AWS_* variables, as for serve), to check that recorded files are present')
            [CompletionResult]::new('--client', '--client', [CompletionResultType]::ParameterName, 'Show only this client (name or id). A name or id that matches no client is an error (exit 2)')
            [CompletionResult]::new('--bytes', '--bytes', [CompletionResultType]::ParameterName, 'Print sizes as byte counts, not in binary units (1.50 MiB)')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON instead of tables (sizes are always byte counts there)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'securexfer;db;verify' {
            [CompletionResult]::new('--db', '--db', [CompletionResultType]::ParameterName, 'The server''s database')
            [CompletionResult]::new('--storage', '--storage', [CompletionResultType]::ParameterName, 'The storage directory')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON document instead of lines')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'securexfer;db;restore' {
            [CompletionResult]::new('--db', '--db', [CompletionResultType]::ParameterName, 'The server''s database')
            [CompletionResult]::new('--storage', '--storage', [CompletionResultType]::ParameterName, 'The server''s storage directory')
            [CompletionResult]::new('--client', '--client', [CompletionResultType]::ParameterName, 'The client (name or id)')
            [CompletionResult]::new('--file', '--file', [CompletionResultType]::ParameterName, 'The file, by its stored name (or the name the client sent)')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Which version (as `db inspect` numbers them); default: the newest')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'securexfer;db;fingerprint' {
            [CompletionResult]::new('--db', '--db', [CompletionResultType]::ParameterName, 'The server''s database (the key is DB.key beside it), or postgres://… (the key every instance over it presents, kept in it)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'securexfer;db;invite' {
            [CompletionResult]::new('--db', '--db', [CompletionResultType]::ParameterName, 'The server''s database: a SQLite file, or a `postgres://` address (every instance over it takes the token)')
            [CompletionResult]::new('--name', '--name', [CompletionResultType]::ParameterName, 'The client name the token is for: registering with it under another name is refused. Without it, any name')
            [CompletionResult]::new('--expires', '--expires', [CompletionResultType]::ParameterName, 'How long the token is valid: a number with s, m, h or d (seconds, minutes, hours, days)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'securexfer;db;quota' {
            [CompletionResult]::new('--db', '--db', [CompletionResultType]::ParameterName, 'The server''s database: a SQLite file, or postgres://… (every instance over it sees a change at its next upload)')
            [CompletionResult]::new('--client', '--client', [CompletionResultType]::ParameterName, 'The client (name or id)')
            [CompletionResult]::new('--bytes', '--bytes', [CompletionResultType]::ParameterName, 'Set the bytes quota: a size with an optional K, M, G or T (binary units), or `none`')
            [CompletionResult]::new('--files', '--files', [CompletionResultType]::ParameterName, 'Set the files quota: a number, or `none`')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON instead of lines (sizes are byte counts there)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'securexfer;db;migrate' {
            [CompletionResult]::new('--from', '--from', [CompletionResultType]::ParameterName, 'What to move: the SQLite database and the storage directory of one server')
            [CompletionResult]::new('--to', '--to', [CompletionResultType]::ParameterName, 'Where to: the PostgreSQL database and the object store (endpoint and credentials from the AWS_* variables, as for serve). The schema is migrated if need be')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON document instead of lines')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'securexfer;db;help' {
            [CompletionResult]::new('inspect', 'inspect', [CompletionResultType]::ParameterValue, 'Show clients, files and kept versions, read-only (safe while the server runs), from a SQLite file or a postgres:// address, checking each file against a local storage directory or an s3:// object store (listed, never written). Sizes are in binary units (--bytes for byte counts); on a terminal, long names are cut with an ellipsis to fit its width (never in a pipe or a file)')
            [CompletionResult]::new('verify', 'verify', [CompletionResultType]::ParameterValue, 'Re-read every stored file and kept version and check it against its record (size and cksum): reports missing, changed and unrecorded files. Read-only. Exit 5 if any')
            [CompletionResult]::new('restore', 'restore', [CompletionResultType]::ParameterValue, 'Put an earlier version of a stored file back; the current one becomes a version in turn. Run it with the server stopped (it refuses while one holds the storage)')
            [CompletionResult]::new('fingerprint', 'fingerprint', [CompletionResultType]::ParameterValue, 'Print the fingerprint of the server''s key (`SHA256:...`, kept in DB.key beside the database, or in a PostgreSQL database itself), for clients to pin before their first contact. Exit 6 if there is no key yet (`serve` makes it at its first start)')
            [CompletionResult]::new('invite', 'invite', [CompletionResultType]::ParameterValue, 'Make an invitation for `serve --registration token`: prints a single-use token (`sxi-` and 26 characters) for one protocol-4 client to register with. The database keeps only its SHA-256, its name and expiry, and when and by whom it was used')
            [CompletionResult]::new('quota', 'quota', [CompletionResultType]::ParameterValue, 'Show or set a client''s quota: the bytes its files, kept versions and open uploads may take and how many files it may store. Checked by protocol 4 before any content of an upload is accepted (protocol 3 uploads are not counted against it). Safe while the server runs; new uploads see a change at once')
            [CompletionResult]::new('migrate', 'migrate', [CompletionResultType]::ParameterValue, 'Move a single machine''s records and files to PostgreSQL and an object store (the configuration of many `serve` instances): every client, key, quota, invitation, file and kept version, each file hashed on the way and read back from the store. Safe while the server runs, and re-runnable: a second run moves only what is not there yet as the source has it. Exit 5 if a file is not what its record says')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'securexfer;db;help;inspect' {
            break
        }
        'securexfer;db;help;verify' {
            break
        }
        'securexfer;db;help;restore' {
            break
        }
        'securexfer;db;help;fingerprint' {
            break
        }
        'securexfer;db;help;invite' {
            break
        }
        'securexfer;db;help;quota' {
            break
        }
        'securexfer;db;help;migrate' {
            break
        }
        'securexfer;db;help;help' {
            break
        }
        'securexfer;trust' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server address as HOST:PORT; the port defaults to 1357. Default: the server of the latest `register`')
            [CompletionResult]::new('--fingerprint', '--fingerprint', [CompletionResultType]::ParameterName, 'The key the server must present, as `securexfer db fingerprint` shows it on the server (SHA256:...): pins it before the first contact, or accepts a new key the operator confirmed')
            [CompletionResult]::new('--server-fingerprint', '--server-fingerprint', [CompletionResultType]::ParameterName, 'The key the server must present, as `securexfer db fingerprint` shows it on the server (SHA256:...): pins it before the first contact, or accepts a new key the operator confirmed')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'Seconds to wait for the connection and the handshake')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'securexfer;completions' {
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'securexfer;man' {
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'securexfer;help' {
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Run the storage server')
            [CompletionResult]::new('register', 'register', [CompletionResultType]::ParameterValue, 'Make a key pair, register a name with a server and save the identity')
            [CompletionResult]::new('send', 'send', [CompletionResultType]::ParameterValue, 'Send files to a server and verify them (registers first if there is no identity)')
            [CompletionResult]::new('ls', 'ls', [CompletionResultType]::ParameterValue, 'List this client''s files on a server (protocol 4): size, when stored, BLAKE3 (the first 16 hex digits) and kept versions, in byte order of their names')
            [CompletionResult]::new('get', 'get', [CompletionResultType]::ParameterValue, 'Download stored files (protocol 4). Each is written to .NAME.securexfer-partial in the target directory and takes its name only once its BLAKE3 matches the server''s; a download cut off leaves that file, and the same get continues it')
            [CompletionResult]::new('rm', 'rm', [CompletionResultType]::ParameterValue, 'Remove stored files from a server (protocol 4). The server keeps a removed copy as a version, as it keeps a replaced one (serve --keep-versions)')
            [CompletionResult]::new('db', 'db', [CompletionResultType]::ParameterValue, 'Read the server''s database')
            [CompletionResult]::new('trust', 'trust', [CompletionResultType]::ParameterValue, 'Check which key a server presents over protocol 4 (TLS 1.3) and trust it: on first contact the key is trusted and saved in known_servers; later, a different key is a hard failure (exit 8). With --fingerprint, only that key is accepted (and saved)')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print the completion script for a shell on stdout')
            [CompletionResult]::new('man', 'man', [CompletionResultType]::ParameterValue, 'Write the man pages (one per command) into a directory')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'securexfer;help;serve' {
            break
        }
        'securexfer;help;register' {
            break
        }
        'securexfer;help;send' {
            break
        }
        'securexfer;help;ls' {
            break
        }
        'securexfer;help;get' {
            break
        }
        'securexfer;help;rm' {
            break
        }
        'securexfer;help;db' {
            [CompletionResult]::new('inspect', 'inspect', [CompletionResultType]::ParameterValue, 'Show clients, files and kept versions, read-only (safe while the server runs), from a SQLite file or a postgres:// address, checking each file against a local storage directory or an s3:// object store (listed, never written). Sizes are in binary units (--bytes for byte counts); on a terminal, long names are cut with an ellipsis to fit its width (never in a pipe or a file)')
            [CompletionResult]::new('verify', 'verify', [CompletionResultType]::ParameterValue, 'Re-read every stored file and kept version and check it against its record (size and cksum): reports missing, changed and unrecorded files. Read-only. Exit 5 if any')
            [CompletionResult]::new('restore', 'restore', [CompletionResultType]::ParameterValue, 'Put an earlier version of a stored file back; the current one becomes a version in turn. Run it with the server stopped (it refuses while one holds the storage)')
            [CompletionResult]::new('fingerprint', 'fingerprint', [CompletionResultType]::ParameterValue, 'Print the fingerprint of the server''s key (`SHA256:...`, kept in DB.key beside the database, or in a PostgreSQL database itself), for clients to pin before their first contact. Exit 6 if there is no key yet (`serve` makes it at its first start)')
            [CompletionResult]::new('invite', 'invite', [CompletionResultType]::ParameterValue, 'Make an invitation for `serve --registration token`: prints a single-use token (`sxi-` and 26 characters) for one protocol-4 client to register with. The database keeps only its SHA-256, its name and expiry, and when and by whom it was used')
            [CompletionResult]::new('quota', 'quota', [CompletionResultType]::ParameterValue, 'Show or set a client''s quota: the bytes its files, kept versions and open uploads may take and how many files it may store. Checked by protocol 4 before any content of an upload is accepted (protocol 3 uploads are not counted against it). Safe while the server runs; new uploads see a change at once')
            [CompletionResult]::new('migrate', 'migrate', [CompletionResultType]::ParameterValue, 'Move a single machine''s records and files to PostgreSQL and an object store (the configuration of many `serve` instances): every client, key, quota, invitation, file and kept version, each file hashed on the way and read back from the store. Safe while the server runs, and re-runnable: a second run moves only what is not there yet as the source has it. Exit 5 if a file is not what its record says')
            break
        }
        'securexfer;help;db;inspect' {
            break
        }
        'securexfer;help;db;verify' {
            break
        }
        'securexfer;help;db;restore' {
            break
        }
        'securexfer;help;db;fingerprint' {
            break
        }
        'securexfer;help;db;invite' {
            break
        }
        'securexfer;help;db;quota' {
            break
        }
        'securexfer;help;db;migrate' {
            break
        }
        'securexfer;help;trust' {
            break
        }
        'securexfer;help;completions' {
            break
        }
        'securexfer;help;man' {
            break
        }
        'securexfer;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
