# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_securexfer_global_optspecs
    string join \n h/help V/version
end

function __fish_securexfer_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_securexfer_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_securexfer_using_subcommand
    set -l cmd (__fish_securexfer_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c securexfer -n "__fish_securexfer_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c securexfer -n "__fish_securexfer_needs_command" -s V -l version -d 'Print version'
complete -c securexfer -n "__fish_securexfer_needs_command" -f -a "serve" -d 'Run the storage server'
complete -c securexfer -n "__fish_securexfer_needs_command" -f -a "register" -d 'Make a key pair, register a name with a server and save the identity'
complete -c securexfer -n "__fish_securexfer_needs_command" -f -a "send" -d 'Send files to a server and verify them (registers first if there is no identity)'
complete -c securexfer -n "__fish_securexfer_needs_command" -f -a "ls" -d 'List this client\'s files on a server (protocol 4): size, when stored, BLAKE3 (the first 16 hex digits) and kept versions, in byte order of their names'
complete -c securexfer -n "__fish_securexfer_needs_command" -f -a "get" -d 'Download stored files (protocol 4). Each is written to .NAME.securexfer-partial in the target directory and takes its name only once its BLAKE3 matches the server\'s; a download cut off leaves that file, and the same get continues it'
complete -c securexfer -n "__fish_securexfer_needs_command" -f -a "rm" -d 'Remove stored files from a server (protocol 4). The server keeps a removed copy as a version, as it keeps a replaced one (serve --keep-versions)'
complete -c securexfer -n "__fish_securexfer_needs_command" -f -a "db" -d 'Read the server\'s database'
complete -c securexfer -n "__fish_securexfer_needs_command" -f -a "trust" -d 'Check which key a server presents over protocol 4 (TLS 1.3) and trust it: on first contact the key is trusted and saved in known_servers; later, a different key is a hard failure (exit 8). With --fingerprint, only that key is accepted (and saved)'
complete -c securexfer -n "__fish_securexfer_needs_command" -f -a "completions" -d 'Print the completion script for a shell on stdout'
complete -c securexfer -n "__fish_securexfer_needs_command" -f -a "man" -d 'Write the man pages (one per command) into a directory'
complete -c securexfer -n "__fish_securexfer_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l config -d 'Configuration file (default /etc/securexfer/serve.toml, if it exists): keys are the long flags (`max-file-size = "8G"`). Flags and SECUREXFER_* variables win over it' -r -F
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l listen -d 'Address to listen on. The default accepts only this machine; use 0.0.0.0 (or ::) to accept remote clients' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l port -d 'Port to listen on (0 picks a free one, printed at start-up)' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l storage -d 'Directory where received files are stored, one subdirectory per client id; or an S3-compatible object store that several servers share, as s3://BUCKET/PREFIX (endpoint, region and keys from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; plain http only on loopback or with AWS_ALLOW_HTTP=true)' -r -f -a "(__fish_complete_directories)"
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l db -d 'SQLite database of clients and files; or a PostgreSQL database that several servers share, as postgres://USER:PASSWORD@HOST:PORT/DB (no TLS to it yet: loopback or a private network)' -r -F
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l max-file-size -d 'Largest file accepted (encrypted size; suffixes K, M, G). Larger uploads are refused before anything is read. The protocol\'s own limit is 4G minus 16 bytes' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l max-connections -d 'Most simultaneous connections. When full, the oldest idle connection that never made a key exchange is closed to make room; without one, newcomers wait' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l max-connections-per-address -d 'Most connections one IP address may hold at once; more are closed at once. 0: no cap' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l request-deadline -d 'Seconds a client gets for a whole request header and fixed-size payload, from its first byte (file content is not included); slower peers are disconnected' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l max-uploads -d 'Most uploads whose content is being read at once; a 1028 beyond gets 2107 before its content is read. Each must also average 64 KiB/s after an idle timeout\'s grace' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l idle-timeout -d 'Seconds a client may stay silent, between requests or in the middle of one' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l session-window -d 'Seconds after a key exchange during which a client that opens one connection per request may send and confirm files from the same IP address' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l grace -d 'Seconds transfers in flight may run on after SIGINT or SIGTERM' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l disk-reserve -d 'Free space to keep on the storage file system; uploads that would eat into it are refused (suffixes K, M, G)' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l compat -d 'Serve an existing client that deviates from the protocol. `crc32-ciphertext`: to clients whose requests carry version byte 1 (the `dor` client; nobody else sends it), answer 1028 with the zlib CRC-32 of the ciphertext received, as that client checks, and answer its 1030 with 2104, as it waits for one. Every other client gets exactly the protocol' -r -f -a "crc32-ciphertext\t'Version-1 clients get the CRC-32 of the ciphertext in 2103 and a 2104 for 1030'"
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l registrations-per-minute -d 'Registrations one IP address (IPv6: one /64) may make per minute, in bursts of up to twice as many; more get 2107. 0 turns the limit off' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l keep-versions -d 'Earlier versions kept of each stored file when a newer confirmed upload of the same name replaces it (under DIR/.versions/; `db inspect` lists them, `db restore` puts one back). 0 keeps none' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l resume-window -d 'How long a protocol-4 upload of known size that its connection left unfinished (network drop, killed client, server restart) is kept for `send` to resume where it stopped; 0 keeps none. Only with a storage directory: an object store keeps none' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l registration -d 'Who may register: `open` (anyone, as protocol 3 always did), `token` (protocol 4 clients with an invitation from `securexfer db invite`), `closed` (nobody). Under token and closed, protocol 3\'s registration (1025) gets 2107: it cannot carry a token. Registered clients, and upgrades of protocol-3 clients, work under all three' -r -f -a "open\t'Anyone'
token\t'Only with an invitation token (protocol 4)'
closed\t'Nobody'"
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l metrics -d 'Serve metrics in the Prometheus text format on http://ADDR/metrics (for example 127.0.0.1:9357; port 0 picks a free one, logged at start-up): connections, requests by code and outcome, refusals by reason, bytes received, uploads by outcome and their duration, sessions, free disk space, database latency. The endpoint has no authentication: keep it on loopback or a monitoring network' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l log-format -d 'How log lines are written to stderr: `text` for people, `json` (one object per line) for log collectors' -r -f -a "text\t'Human-readable lines'
json\t'One JSON object per line'"
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -l strict-sessions -d 'Serve file requests only on the connection that made the key exchange (refuses clients that open one connection per request)'
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -s v -l verbose -d 'Log warnings and errors only (-q), or more detail (-v: debug, -vv: trace). Without them, RUST_LOG sets what is logged (default: info)'
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -s q -l quiet -d 'Log warnings and errors only'
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c securexfer -n "__fish_securexfer_using_subcommand serve" -s V -l version -d 'Print version'
complete -c securexfer -n "__fish_securexfer_using_subcommand register" -l config -d 'Configuration file (default $XDG_CONFIG_HOME/securexfer/config.toml, if it exists): keys are the long flags (`server = "files.example.org"`). Flags and SECUREXFER_* variables win over it' -r -F
complete -c securexfer -n "__fish_securexfer_using_subcommand register" -l server -d 'Server address as HOST:PORT; the port defaults to 1357. Default: line 1 of transfer.info, else the server of the latest `register`' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand register" -l name -d 'Client name to register (default: line 2 of transfer.info)' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand register" -l identity -d 'The identity file (me.info; priv.key is kept beside it). Default: me.info in the working directory if there is one (the existing client\'s), else this server\'s identity in $XDG_CONFIG_HOME/securexfer/servers/HOST_PORT/ (~/.config/securexfer)' -r -F
complete -c securexfer -n "__fish_securexfer_using_subcommand register" -l connect-timeout -d 'Seconds to wait for a connection' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand register" -l timeout -d 'Seconds to wait for the server on each read or write' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand register" -l protocol -d 'Which protocol to speak. `auto` opens with protocol 4 (TLS 1.3, the server\'s key checked against known_servers) and falls back to protocol 3, with a warning, only for a server never seen speaking 4 that does not speak it. `3` is refused (exit 8) for a server known to speak 4; `4` never falls back' -r -f -a "3\t'Protocol 3 only (the existing servers\' protocol; it does not authenticate the server)'
4\t'Protocol 4 only'
auto\t'Protocol 4, or 3 for a server never seen speaking 4 that does not speak it'"
complete -c securexfer -n "__fish_securexfer_using_subcommand register" -l server-fingerprint -d 'The key the server must present over protocol 4, as `securexfer db fingerprint` shows it on the server (SHA256:...): pins it before the first contact. With a key already in known_servers, the two must agree' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand register" -l token -d 'The invitation token the server\'s operator gave (`securexfer db invite`), for a server whose registration policy is `token` (protocol 4): sxi- and 26 characters' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand register" -s v -l verbose -d 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged'
complete -c securexfer -n "__fish_securexfer_using_subcommand register" -l force -d 'Replace an existing identity (the old one is kept as me.info.bak)'
complete -c securexfer -n "__fish_securexfer_using_subcommand register" -s q -l quiet -d 'Print nothing on success'
complete -c securexfer -n "__fish_securexfer_using_subcommand register" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c securexfer -n "__fish_securexfer_using_subcommand register" -s V -l version -d 'Print version'
complete -c securexfer -n "__fish_securexfer_using_subcommand send" -l config -d 'Configuration file (default $XDG_CONFIG_HOME/securexfer/config.toml, if it exists): keys are the long flags (`server = "files.example.org"`). Flags and SECUREXFER_* variables win over it' -r -F
complete -c securexfer -n "__fish_securexfer_using_subcommand send" -l server -d 'Server address as HOST:PORT; the port defaults to 1357. Default: line 1 of transfer.info, else the server of the latest `register`' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand send" -l name -d 'Client name to register (default: line 2 of transfer.info)' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand send" -l identity -d 'The identity file (me.info; priv.key is kept beside it). Default: me.info in the working directory if there is one (the existing client\'s), else this server\'s identity in $XDG_CONFIG_HOME/securexfer/servers/HOST_PORT/ (~/.config/securexfer)' -r -F
complete -c securexfer -n "__fish_securexfer_using_subcommand send" -l connect-timeout -d 'Seconds to wait for a connection' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand send" -l timeout -d 'Seconds to wait for the server on each read or write' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand send" -l protocol -d 'Which protocol to speak. `auto` opens with protocol 4 (TLS 1.3, the server\'s key checked against known_servers) and falls back to protocol 3, with a warning, only for a server never seen speaking 4 that does not speak it. `3` is refused (exit 8) for a server known to speak 4; `4` never falls back' -r -f -a "3\t'Protocol 3 only (the existing servers\' protocol; it does not authenticate the server)'
4\t'Protocol 4 only'
auto\t'Protocol 4, or 3 for a server never seen speaking 4 that does not speak it'"
complete -c securexfer -n "__fish_securexfer_using_subcommand send" -l server-fingerprint -d 'The key the server must present over protocol 4, as `securexfer db fingerprint` shows it on the server (SHA256:...): pins it before the first contact. With a key already in known_servers, the two must agree' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand send" -l as -d 'The name to store the file under, instead of its own (one FILE only). Names are up to 254 bytes of printable ASCII. With -r, the name of the stored folder instead of the DIR\'s own (one DIR only)' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand send" -l limit-rate -d 'Send file content at most RATE bytes per second, as curl\'s --limit-rate: a number with an optional K, M or G (binary units), e.g. 500K or 10M. Both protocols' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand send" -l parallel -d 'Send over N connections at once, each taking the next file (or the next run of small files) as it is free; the bars show the whole run. Protocol 4 only. With --limit-rate, the rate is shared among them' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand send" -s v -l verbose -d 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged'
complete -c securexfer -n "__fish_securexfer_using_subcommand send" -s q -l quiet -d 'No progress bar and no summary lines (errors are still printed)'
complete -c securexfer -n "__fish_securexfer_using_subcommand send" -l json -d 'Print one JSON object per file on stdout, in argument order, then a summary object (the schema is in docs/json.md)'
complete -c securexfer -n "__fish_securexfer_using_subcommand send" -s r -l recursive -d 'Send folders: every regular file under each DIR, stored as DIR\'s name and its path below it. Symbolic links and special files are skipped with a note (never followed), empty folders too. Protocol 4 only'
complete -c securexfer -n "__fish_securexfer_using_subcommand send" -l dry-run -d 'Send nothing: print what would be sent, which stored files it would replace and what the server would refuse: a file/folder conflict, --no-clobber, the quota (with --json, one object per file). Protocol 4 only (protocol 3 cannot list what is stored)'
complete -c securexfer -n "__fish_securexfer_using_subcommand send" -l no-clobber -d 'Never replace a stored file: a file whose name is taken on the server is refused (reported, exit 4) and the others are sent. Protocol 4 only'
complete -c securexfer -n "__fish_securexfer_using_subcommand send" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c securexfer -n "__fish_securexfer_using_subcommand send" -s V -l version -d 'Print version'
complete -c securexfer -n "__fish_securexfer_using_subcommand ls" -l config -d 'Configuration file (default $XDG_CONFIG_HOME/securexfer/config.toml, if it exists): keys are the long flags (`server = "files.example.org"`). Flags and SECUREXFER_* variables win over it' -r -F
complete -c securexfer -n "__fish_securexfer_using_subcommand ls" -l server -d 'Server address as HOST:PORT; the port defaults to 1357. Default: line 1 of transfer.info, else the server of the latest `register`' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand ls" -l name -d 'Client name to register (default: line 2 of transfer.info)' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand ls" -l identity -d 'The identity file (me.info; priv.key is kept beside it). Default: me.info in the working directory if there is one (the existing client\'s), else this server\'s identity in $XDG_CONFIG_HOME/securexfer/servers/HOST_PORT/ (~/.config/securexfer)' -r -F
complete -c securexfer -n "__fish_securexfer_using_subcommand ls" -l connect-timeout -d 'Seconds to wait for a connection' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand ls" -l timeout -d 'Seconds to wait for the server on each read or write' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand ls" -l protocol -d 'Which protocol to speak. `auto` opens with protocol 4 (TLS 1.3, the server\'s key checked against known_servers) and falls back to protocol 3, with a warning, only for a server never seen speaking 4 that does not speak it. `3` is refused (exit 8) for a server known to speak 4; `4` never falls back' -r -f -a "3\t'Protocol 3 only (the existing servers\' protocol; it does not authenticate the server)'
4\t'Protocol 4 only'
auto\t'Protocol 4, or 3 for a server never seen speaking 4 that does not speak it'"
complete -c securexfer -n "__fish_securexfer_using_subcommand ls" -l server-fingerprint -d 'The key the server must present over protocol 4, as `securexfer db fingerprint` shows it on the server (SHA256:...): pins it before the first contact. With a key already in known_servers, the two must agree' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand ls" -s v -l verbose -d 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged'
complete -c securexfer -n "__fish_securexfer_using_subcommand ls" -l bytes -d 'Print sizes as byte counts, not in binary units (1.5 MiB)'
complete -c securexfer -n "__fish_securexfer_using_subcommand ls" -l json -d 'Print one JSON object per file on stdout, then a summary object (docs/json.md)'
complete -c securexfer -n "__fish_securexfer_using_subcommand ls" -s q -l quiet -d 'Print nothing but errors (the exit code says whether every pattern matched)'
complete -c securexfer -n "__fish_securexfer_using_subcommand ls" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c securexfer -n "__fish_securexfer_using_subcommand ls" -s V -l version -d 'Print version'
complete -c securexfer -n "__fish_securexfer_using_subcommand get" -s o -l output -d 'Where to write them: a directory that exists, or - for stdout' -r -f -a "(__fish_complete_directories)"
complete -c securexfer -n "__fish_securexfer_using_subcommand get" -l limit-rate -d 'Receive file content at most RATE bytes per second, as curl\'s --limit-rate: a number with an optional K, M or G (binary units), e.g. 500K or 10M' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand get" -l config -d 'Configuration file (default $XDG_CONFIG_HOME/securexfer/config.toml, if it exists): keys are the long flags (`server = "files.example.org"`). Flags and SECUREXFER_* variables win over it' -r -F
complete -c securexfer -n "__fish_securexfer_using_subcommand get" -l server -d 'Server address as HOST:PORT; the port defaults to 1357. Default: line 1 of transfer.info, else the server of the latest `register`' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand get" -l name -d 'Client name to register (default: line 2 of transfer.info)' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand get" -l identity -d 'The identity file (me.info; priv.key is kept beside it). Default: me.info in the working directory if there is one (the existing client\'s), else this server\'s identity in $XDG_CONFIG_HOME/securexfer/servers/HOST_PORT/ (~/.config/securexfer)' -r -F
complete -c securexfer -n "__fish_securexfer_using_subcommand get" -l connect-timeout -d 'Seconds to wait for a connection' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand get" -l timeout -d 'Seconds to wait for the server on each read or write' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand get" -l protocol -d 'Which protocol to speak. `auto` opens with protocol 4 (TLS 1.3, the server\'s key checked against known_servers) and falls back to protocol 3, with a warning, only for a server never seen speaking 4 that does not speak it. `3` is refused (exit 8) for a server known to speak 4; `4` never falls back' -r -f -a "3\t'Protocol 3 only (the existing servers\' protocol; it does not authenticate the server)'
4\t'Protocol 4 only'
auto\t'Protocol 4, or 3 for a server never seen speaking 4 that does not speak it'"
complete -c securexfer -n "__fish_securexfer_using_subcommand get" -l server-fingerprint -d 'The key the server must present over protocol 4, as `securexfer db fingerprint` shows it on the server (SHA256:...): pins it before the first contact. With a key already in known_servers, the two must agree' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand get" -s r -l recursive -d 'Download folders: every file under each NAME (a NAME that is a file is that file)'
complete -c securexfer -n "__fish_securexfer_using_subcommand get" -l force -d 'Replace a local file of the same name'
complete -c securexfer -n "__fish_securexfer_using_subcommand get" -s v -l verbose -d 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged'
complete -c securexfer -n "__fish_securexfer_using_subcommand get" -l json -d 'Print one JSON object per file on stdout (stderr with -o -), then a summary object (docs/json.md)'
complete -c securexfer -n "__fish_securexfer_using_subcommand get" -s q -l quiet -d 'Print nothing but errors'
complete -c securexfer -n "__fish_securexfer_using_subcommand get" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c securexfer -n "__fish_securexfer_using_subcommand get" -s V -l version -d 'Print version'
complete -c securexfer -n "__fish_securexfer_using_subcommand rm" -l config -d 'Configuration file (default $XDG_CONFIG_HOME/securexfer/config.toml, if it exists): keys are the long flags (`server = "files.example.org"`). Flags and SECUREXFER_* variables win over it' -r -F
complete -c securexfer -n "__fish_securexfer_using_subcommand rm" -l server -d 'Server address as HOST:PORT; the port defaults to 1357. Default: line 1 of transfer.info, else the server of the latest `register`' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand rm" -l name -d 'Client name to register (default: line 2 of transfer.info)' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand rm" -l identity -d 'The identity file (me.info; priv.key is kept beside it). Default: me.info in the working directory if there is one (the existing client\'s), else this server\'s identity in $XDG_CONFIG_HOME/securexfer/servers/HOST_PORT/ (~/.config/securexfer)' -r -F
complete -c securexfer -n "__fish_securexfer_using_subcommand rm" -l connect-timeout -d 'Seconds to wait for a connection' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand rm" -l timeout -d 'Seconds to wait for the server on each read or write' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand rm" -l protocol -d 'Which protocol to speak. `auto` opens with protocol 4 (TLS 1.3, the server\'s key checked against known_servers) and falls back to protocol 3, with a warning, only for a server never seen speaking 4 that does not speak it. `3` is refused (exit 8) for a server known to speak 4; `4` never falls back' -r -f -a "3\t'Protocol 3 only (the existing servers\' protocol; it does not authenticate the server)'
4\t'Protocol 4 only'
auto\t'Protocol 4, or 3 for a server never seen speaking 4 that does not speak it'"
complete -c securexfer -n "__fish_securexfer_using_subcommand rm" -l server-fingerprint -d 'The key the server must present over protocol 4, as `securexfer db fingerprint` shows it on the server (SHA256:...): pins it before the first contact. With a key already in known_servers, the two must agree' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand rm" -s r -l recursive -d 'Remove folders: every file under each NAME, each kept as a version as a single rm keeps one (a NAME that is a file is that file)'
complete -c securexfer -n "__fish_securexfer_using_subcommand rm" -s v -l verbose -d 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged'
complete -c securexfer -n "__fish_securexfer_using_subcommand rm" -l json -d 'Print one JSON object per file on stdout, then a summary object (docs/json.md)'
complete -c securexfer -n "__fish_securexfer_using_subcommand rm" -s q -l quiet -d 'Print nothing but errors'
complete -c securexfer -n "__fish_securexfer_using_subcommand rm" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c securexfer -n "__fish_securexfer_using_subcommand rm" -s V -l version -d 'Print version'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and not __fish_seen_subcommand_from inspect verify restore fingerprint invite quota migrate help" -s h -l help -d 'Print help'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and not __fish_seen_subcommand_from inspect verify restore fingerprint invite quota migrate help" -s V -l version -d 'Print version'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and not __fish_seen_subcommand_from inspect verify restore fingerprint invite quota migrate help" -f -a "inspect" -d 'Show clients, files and kept versions, read-only (safe while the server runs), from a SQLite file or a postgres:// address, checking each file against a local storage directory or an s3:// object store (listed, never written). Sizes are in binary units (--bytes for byte counts); on a terminal, long names are cut with an ellipsis to fit its width (never in a pipe or a file)'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and not __fish_seen_subcommand_from inspect verify restore fingerprint invite quota migrate help" -f -a "verify" -d 'Re-read every stored file and kept version and check it against its record (size and cksum): reports missing, changed and unrecorded files. Read-only. Exit 5 if any'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and not __fish_seen_subcommand_from inspect verify restore fingerprint invite quota migrate help" -f -a "restore" -d 'Put an earlier version of a stored file back; the current one becomes a version in turn. Run it with the server stopped (it refuses while one holds the storage)'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and not __fish_seen_subcommand_from inspect verify restore fingerprint invite quota migrate help" -f -a "fingerprint" -d 'Print the fingerprint of the server\'s key (`SHA256:...`, kept in DB.key beside the database), for clients to pin before their first contact. Exit 6 if there is no key yet (`serve` makes it at its first start)'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and not __fish_seen_subcommand_from inspect verify restore fingerprint invite quota migrate help" -f -a "invite" -d 'Make an invitation for `serve --registration token`: prints a single-use token (`sxi-` and 26 characters) for one protocol-4 client to register with. The database keeps only its SHA-256, its name and expiry, and when and by whom it was used'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and not __fish_seen_subcommand_from inspect verify restore fingerprint invite quota migrate help" -f -a "quota" -d 'Show or set a client\'s quota: the bytes its files, kept versions and open uploads may take and how many files it may store. Checked by protocol 4 before any content of an upload is accepted (protocol 3 uploads are not counted against it). Safe while the server runs; new uploads see a change at once'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and not __fish_seen_subcommand_from inspect verify restore fingerprint invite quota migrate help" -f -a "migrate" -d 'Move a single machine\'s records and files to PostgreSQL and an object store (the configuration of many `serve` instances): every client, key, quota, invitation, file and kept version, each file hashed on the way and read back from the store. Safe while the server runs, and re-runnable: a second run moves only what is not there yet as the source has it. Exit 5 if a file is not what its record says'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and not __fish_seen_subcommand_from inspect verify restore fingerprint invite quota migrate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from inspect" -l db -d 'The server\'s database: a SQLite file, or postgres://USER:PASSWORD@HOST:PORT/DB (only read: its schema must be this version\'s, which `serve` migrates to)' -r -F
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from inspect" -l storage -d 'Storage directory, or s3://BUCKET/PREFIX (endpoint and credentials from the AWS_* variables, as for serve), to check that recorded files are present' -r -f -a "(__fish_complete_directories)"
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from inspect" -l client -d 'Show only this client (name or id). A name or id that matches no client is an error (exit 2)' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from inspect" -l bytes -d 'Print sizes as byte counts, not in binary units (1.50 MiB)'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from inspect" -l json -d 'Print JSON instead of tables (sizes are always byte counts there)'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from inspect" -s h -l help -d 'Print help'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from inspect" -s V -l version -d 'Print version'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from verify" -l db -d 'The server\'s database' -r -F
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from verify" -l storage -d 'The storage directory' -r -F
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from verify" -l json -d 'Print one JSON document instead of lines'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from verify" -s h -l help -d 'Print help'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from verify" -s V -l version -d 'Print version'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from restore" -l db -d 'The server\'s database' -r -F
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from restore" -l storage -d 'The server\'s storage directory' -r -F
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from restore" -l client -d 'The client (name or id)' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from restore" -l file -d 'The file, by its stored name (or the name the client sent)' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from restore" -l version -d 'Which version (as `db inspect` numbers them); default: the newest' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from restore" -s h -l help -d 'Print help'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from fingerprint" -l db -d 'The server\'s database (the key is DB.key beside it)' -r -F
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from fingerprint" -s h -l help -d 'Print help'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from fingerprint" -s V -l version -d 'Print version'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from invite" -l db -d 'The server\'s database: a SQLite file, or a `postgres://` address (every instance over it takes the token)' -r -F
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from invite" -l name -d 'The client name the token is for: registering with it under another name is refused. Without it, any name' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from invite" -l expires -d 'How long the token is valid: a number with s, m, h or d (seconds, minutes, hours, days)' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from invite" -s h -l help -d 'Print help'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from invite" -s V -l version -d 'Print version'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from quota" -l db -d 'The server\'s database' -r -F
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from quota" -l client -d 'The client (name or id)' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from quota" -l bytes -d 'Set the bytes quota: a size with an optional K, M, G or T (binary units), or `none`' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from quota" -l files -d 'Set the files quota: a number, or `none`' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from quota" -l json -d 'Print JSON instead of lines (sizes are byte counts there)'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from quota" -s h -l help -d 'Print help'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from quota" -s V -l version -d 'Print version'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from migrate" -l from -d 'What to move: the SQLite database and the storage directory of one server' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from migrate" -l to -d 'Where to: the PostgreSQL database and the object store (endpoint and credentials from the AWS_* variables, as for serve). The schema is migrated if need be' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from migrate" -l json -d 'Print one JSON document instead of lines'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from migrate" -s h -l help -d 'Print help'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from migrate" -s V -l version -d 'Print version'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from help" -f -a "inspect" -d 'Show clients, files and kept versions, read-only (safe while the server runs), from a SQLite file or a postgres:// address, checking each file against a local storage directory or an s3:// object store (listed, never written). Sizes are in binary units (--bytes for byte counts); on a terminal, long names are cut with an ellipsis to fit its width (never in a pipe or a file)'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from help" -f -a "verify" -d 'Re-read every stored file and kept version and check it against its record (size and cksum): reports missing, changed and unrecorded files. Read-only. Exit 5 if any'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from help" -f -a "restore" -d 'Put an earlier version of a stored file back; the current one becomes a version in turn. Run it with the server stopped (it refuses while one holds the storage)'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from help" -f -a "fingerprint" -d 'Print the fingerprint of the server\'s key (`SHA256:...`, kept in DB.key beside the database), for clients to pin before their first contact. Exit 6 if there is no key yet (`serve` makes it at its first start)'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from help" -f -a "invite" -d 'Make an invitation for `serve --registration token`: prints a single-use token (`sxi-` and 26 characters) for one protocol-4 client to register with. The database keeps only its SHA-256, its name and expiry, and when and by whom it was used'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from help" -f -a "quota" -d 'Show or set a client\'s quota: the bytes its files, kept versions and open uploads may take and how many files it may store. Checked by protocol 4 before any content of an upload is accepted (protocol 3 uploads are not counted against it). Safe while the server runs; new uploads see a change at once'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from help" -f -a "migrate" -d 'Move a single machine\'s records and files to PostgreSQL and an object store (the configuration of many `serve` instances): every client, key, quota, invitation, file and kept version, each file hashed on the way and read back from the store. Safe while the server runs, and re-runnable: a second run moves only what is not there yet as the source has it. Exit 5 if a file is not what its record says'
complete -c securexfer -n "__fish_securexfer_using_subcommand db; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c securexfer -n "__fish_securexfer_using_subcommand trust" -l server -d 'Server address as HOST:PORT; the port defaults to 1357. Default: the server of the latest `register`' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand trust" -l fingerprint -l server-fingerprint -d 'The key the server must present, as `securexfer db fingerprint` shows it on the server (SHA256:...): pins it before the first contact, or accepts a new key the operator confirmed' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand trust" -l connect-timeout -d 'Seconds to wait for the connection and the handshake' -r
complete -c securexfer -n "__fish_securexfer_using_subcommand trust" -s h -l help -d 'Print help'
complete -c securexfer -n "__fish_securexfer_using_subcommand trust" -s V -l version -d 'Print version'
complete -c securexfer -n "__fish_securexfer_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c securexfer -n "__fish_securexfer_using_subcommand completions" -s V -l version -d 'Print version'
complete -c securexfer -n "__fish_securexfer_using_subcommand man" -s h -l help -d 'Print help'
complete -c securexfer -n "__fish_securexfer_using_subcommand man" -s V -l version -d 'Print version'
complete -c securexfer -n "__fish_securexfer_using_subcommand help; and not __fish_seen_subcommand_from serve register send ls get rm db trust completions man help" -f -a "serve" -d 'Run the storage server'
complete -c securexfer -n "__fish_securexfer_using_subcommand help; and not __fish_seen_subcommand_from serve register send ls get rm db trust completions man help" -f -a "register" -d 'Make a key pair, register a name with a server and save the identity'
complete -c securexfer -n "__fish_securexfer_using_subcommand help; and not __fish_seen_subcommand_from serve register send ls get rm db trust completions man help" -f -a "send" -d 'Send files to a server and verify them (registers first if there is no identity)'
complete -c securexfer -n "__fish_securexfer_using_subcommand help; and not __fish_seen_subcommand_from serve register send ls get rm db trust completions man help" -f -a "ls" -d 'List this client\'s files on a server (protocol 4): size, when stored, BLAKE3 (the first 16 hex digits) and kept versions, in byte order of their names'
complete -c securexfer -n "__fish_securexfer_using_subcommand help; and not __fish_seen_subcommand_from serve register send ls get rm db trust completions man help" -f -a "get" -d 'Download stored files (protocol 4). Each is written to .NAME.securexfer-partial in the target directory and takes its name only once its BLAKE3 matches the server\'s; a download cut off leaves that file, and the same get continues it'
complete -c securexfer -n "__fish_securexfer_using_subcommand help; and not __fish_seen_subcommand_from serve register send ls get rm db trust completions man help" -f -a "rm" -d 'Remove stored files from a server (protocol 4). The server keeps a removed copy as a version, as it keeps a replaced one (serve --keep-versions)'
complete -c securexfer -n "__fish_securexfer_using_subcommand help; and not __fish_seen_subcommand_from serve register send ls get rm db trust completions man help" -f -a "db" -d 'Read the server\'s database'
complete -c securexfer -n "__fish_securexfer_using_subcommand help; and not __fish_seen_subcommand_from serve register send ls get rm db trust completions man help" -f -a "trust" -d 'Check which key a server presents over protocol 4 (TLS 1.3) and trust it: on first contact the key is trusted and saved in known_servers; later, a different key is a hard failure (exit 8). With --fingerprint, only that key is accepted (and saved)'
complete -c securexfer -n "__fish_securexfer_using_subcommand help; and not __fish_seen_subcommand_from serve register send ls get rm db trust completions man help" -f -a "completions" -d 'Print the completion script for a shell on stdout'
complete -c securexfer -n "__fish_securexfer_using_subcommand help; and not __fish_seen_subcommand_from serve register send ls get rm db trust completions man help" -f -a "man" -d 'Write the man pages (one per command) into a directory'
complete -c securexfer -n "__fish_securexfer_using_subcommand help; and not __fish_seen_subcommand_from serve register send ls get rm db trust completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c securexfer -n "__fish_securexfer_using_subcommand help; and __fish_seen_subcommand_from db" -f -a "inspect" -d 'Show clients, files and kept versions, read-only (safe while the server runs), from a SQLite file or a postgres:// address, checking each file against a local storage directory or an s3:// object store (listed, never written). Sizes are in binary units (--bytes for byte counts); on a terminal, long names are cut with an ellipsis to fit its width (never in a pipe or a file)'
complete -c securexfer -n "__fish_securexfer_using_subcommand help; and __fish_seen_subcommand_from db" -f -a "verify" -d 'Re-read every stored file and kept version and check it against its record (size and cksum): reports missing, changed and unrecorded files. Read-only. Exit 5 if any'
complete -c securexfer -n "__fish_securexfer_using_subcommand help; and __fish_seen_subcommand_from db" -f -a "restore" -d 'Put an earlier version of a stored file back; the current one becomes a version in turn. Run it with the server stopped (it refuses while one holds the storage)'
complete -c securexfer -n "__fish_securexfer_using_subcommand help; and __fish_seen_subcommand_from db" -f -a "fingerprint" -d 'Print the fingerprint of the server\'s key (`SHA256:...`, kept in DB.key beside the database), for clients to pin before their first contact. Exit 6 if there is no key yet (`serve` makes it at its first start)'
complete -c securexfer -n "__fish_securexfer_using_subcommand help; and __fish_seen_subcommand_from db" -f -a "invite" -d 'Make an invitation for `serve --registration token`: prints a single-use token (`sxi-` and 26 characters) for one protocol-4 client to register with. The database keeps only its SHA-256, its name and expiry, and when and by whom it was used'
complete -c securexfer -n "__fish_securexfer_using_subcommand help; and __fish_seen_subcommand_from db" -f -a "quota" -d 'Show or set a client\'s quota: the bytes its files, kept versions and open uploads may take and how many files it may store. Checked by protocol 4 before any content of an upload is accepted (protocol 3 uploads are not counted against it). Safe while the server runs; new uploads see a change at once'
complete -c securexfer -n "__fish_securexfer_using_subcommand help; and __fish_seen_subcommand_from db" -f -a "migrate" -d 'Move a single machine\'s records and files to PostgreSQL and an object store (the configuration of many `serve` instances): every client, key, quota, invitation, file and kept version, each file hashed on the way and read back from the store. Safe while the server runs, and re-runnable: a second run moves only what is not there yet as the source has it. Exit 5 if a file is not what its record says'
