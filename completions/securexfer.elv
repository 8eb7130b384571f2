
use builtin;
use str;

set edit:completion:arg-completer[securexfer] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'securexfer'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'securexfer'= {
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
            cand serve 'Run the storage server'
            cand register 'Make a key pair, register a name with a server and save the identity'
            cand send 'Send files to a server and verify them (registers first if there is no identity)'
            cand ls 'List this client''s files on a server (protocol 4): size, when stored, BLAKE3 (the first 16 hex digits) and kept versions, in byte order of their names'
            cand get 'Download stored files (protocol 4). Each is written to .NAME.securexfer-partial in the target directory and takes its name only once its BLAKE3 matches the server''s; a download cut off leaves that file, and the same get continues it'
            cand rm 'Remove stored files from a server (protocol 4). The server keeps a removed copy as a version, as it keeps a replaced one (serve --keep-versions)'
            cand db 'Read the server''s database'
            cand trust 'Check which key a server presents over protocol 4 (TLS 1.3) and trust it: on first contact the key is trusted and saved in known_servers; later, a different key is a hard failure (exit 8). With --fingerprint, only that key is accepted (and saved)'
            cand completions 'Print the completion script for a shell on stdout'
            cand man 'Write the man pages (one per command) into a directory'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'securexfer;serve'= {
            cand --config 'Configuration file (default /etc/securexfer/serve.toml, if it exists): keys are the long flags (`max-file-size = "8G"`). Flags and SECUREXFER_* variables win over it'
            cand --listen 'Address to listen on. The default accepts only this machine; use 0.0.0.0 (or ::) to accept remote clients'
            cand --port 'Port to listen on (0 picks a free one, printed at start-up)'
            cand --storage 'Directory where received files are stored, one subdirectory per client id; or an S3-compatible object store that several servers share, as s3://BUCKET/PREFIX (endpoint, region and keys from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; plain http only on loopback or with AWS_ALLOW_HTTP=true)'
            cand --db 'SQLite database of clients and files; or a PostgreSQL database that several servers share, as postgres://USER:PASSWORD@HOST:PORT/DB (no TLS to it yet: loopback or a private network)'
            cand --max-file-size 'Largest file accepted (encrypted size; suffixes K, M, G). Larger uploads are refused before anything is read. The protocol''s own limit is 4G minus 16 bytes'
            cand --max-connections 'Most simultaneous connections. When full, the oldest idle connection that never made a key exchange is closed to make room; without one, newcomers wait'
            cand --max-connections-per-address 'Most connections one IP address may hold at once; more are closed at once. 0: no cap'
            cand --request-deadline 'Seconds a client gets for a whole request header and fixed-size payload, from its first byte (file content is not included); slower peers are disconnected'
            cand --max-uploads 'Most uploads whose content is being read at once; a 1028 beyond gets 2107 before its content is read. Each must also average 64 KiB/s after an idle timeout''s grace'
            cand --idle-timeout 'Seconds a client may stay silent, between requests or in the middle of one'
            cand --session-window 'Seconds after a key exchange during which a client that opens one connection per request may send and confirm files from the same IP address'
            cand --grace 'Seconds transfers in flight may run on after SIGINT or SIGTERM'
            cand --disk-reserve 'Free space to keep on the storage file system; uploads that would eat into it are refused (suffixes K, M, G)'
            cand --compat 'Serve an existing client that deviates from the protocol. `crc32-ciphertext`: to clients whose requests carry version byte 1 (the `dor` client; nobody else sends it), answer 1028 with the zlib CRC-32 of the ciphertext received, as that client checks, and answer its 1030 with 2104, as it waits for one. Every other client gets exactly the protocol'
            cand --registrations-per-minute 'Registrations one IP address (IPv6: one /64) may make per minute, in bursts of up to twice as many; more get 2107. 0 turns the limit off'
            cand --keep-versions 'Earlier versions kept of each stored file when a newer confirmed upload of the same name replaces it (under DIR/.versions/; `db inspect` lists them, `db restore` puts one back). 0 keeps none'
            cand --resume-window 'How long a protocol-4 upload of known size that its connection left unfinished (network drop, killed client, server restart) is kept for `send` to resume where it stopped; 0 keeps none. In an object store, the parts sent so far are kept, and any instance over the same records can resume them'
            cand --registration 'Who may register: `open` (anyone, as protocol 3 always did), `token` (protocol 4 clients with an invitation from `securexfer db invite`), `closed` (nobody). Under token and closed, protocol 3''s registration (1025) gets 2107: it cannot carry a token. Registered clients, and upgrades of protocol-3 clients, work under all three'
            cand --metrics 'Serve metrics in the Prometheus text format on http://ADDR/metrics (for example 127.0.0.1:9357; port 0 picks a free one, logged at start-up): connections, requests by code and outcome, refusals by reason, bytes received, uploads by outcome and their duration, sessions, free disk space, database latency. The endpoint has no authentication: keep it on loopback or a monitoring network'
            cand --log-format 'How log lines are written to stderr: `text` for people, `json` (one object per line) for log collectors'
            cand --strict-sessions 'Serve file requests only on the connection that made the key exchange (refuses clients that open one connection per request)'
            cand -v 'Log warnings and errors only (-q), or more detail (-v: debug, -vv: trace). Without them, RUST_LOG sets what is logged (default: info)'
            cand --verbose 'Log warnings and errors only (-q), or more detail (-v: debug, -vv: trace). Without them, RUST_LOG sets what is logged (default: info)'
            cand -q 'Log warnings and errors only'
            cand --quiet 'Log warnings and errors only'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'securexfer;register'= {
            cand --config 'Configuration file (default $XDG_CONFIG_HOME/securexfer/config.toml, if it exists): keys are the long flags (`server = "files.example.org"`). Flags and SECUREXFER_* variables win over it'
            cand --server 'Server address as HOST:PORT; the port defaults to 1357. Default: line 1 of transfer.info, else the server of the latest `register`'
            cand --name 'Client name to register (default: line 2 of transfer.info)'
            cand --identity 'The identity file (me.info; priv.key is kept beside it). Default: me.info in the working directory if there is one (the existing client''s), else this server''s identity in $XDG_CONFIG_HOME/securexfer/servers/HOST_PORT/ (~/.config/securexfer)'
            cand --connect-timeout 'Seconds to wait for a connection'
            cand --timeout 'Seconds to wait for the server on each read or write'
            cand --protocol 'Which protocol to speak. `auto` opens with protocol 4 (TLS 1.3, the server''s key checked against known_servers) and falls back to protocol 3, with a warning, only for a server never seen speaking 4 that does not speak it. `3` is refused (exit 8) for a server known to speak 4; `4` never falls back'
            cand --server-fingerprint 'The key the server must present over protocol 4, as `securexfer db fingerprint` shows it on the server (SHA256:...): pins it before the first contact. With a key already in known_servers, the two must agree'
            cand --token 'The invitation token the server''s operator gave (`securexfer db invite`), for a server whose registration policy is `token` (protocol 4): sxi- and 26 characters'
            cand -v 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged'
            cand --verbose 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged'
            cand --force 'Replace an existing identity (the old one is kept as me.info.bak)'
            cand -q 'Print nothing on success'
            cand --quiet 'Print nothing on success'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'securexfer;send'= {
            cand --config 'Configuration file (default $XDG_CONFIG_HOME/securexfer/config.toml, if it exists): keys are the long flags (`server = "files.example.org"`). Flags and SECUREXFER_* variables win over it'
            cand --server 'Server address as HOST:PORT; the port defaults to 1357. Default: line 1 of transfer.info, else the server of the latest `register`'
            cand --name 'Client name to register (default: line 2 of transfer.info)'
            cand --identity 'The identity file (me.info; priv.key is kept beside it). Default: me.info in the working directory if there is one (the existing client''s), else this server''s identity in $XDG_CONFIG_HOME/securexfer/servers/HOST_PORT/ (~/.config/securexfer)'
            cand --connect-timeout 'Seconds to wait for a connection'
            cand --timeout 'Seconds to wait for the server on each read or write'
            cand --protocol 'Which protocol to speak. `auto` opens with protocol 4 (TLS 1.3, the server''s key checked against known_servers) and falls back to protocol 3, with a warning, only for a server never seen speaking 4 that does not speak it. `3` is refused (exit 8) for a server known to speak 4; `4` never falls back'
            cand --server-fingerprint 'The key the server must present over protocol 4, as `securexfer db fingerprint` shows it on the server (SHA256:...): pins it before the first contact. With a key already in known_servers, the two must agree'
            cand --as 'The name to store the file under, instead of its own (one FILE only). Names are up to 254 bytes of printable ASCII. With -r, the name of the stored folder instead of the DIR''s own (one DIR only)'
            cand --limit-rate 'Send file content at most RATE bytes per second, as curl''s --limit-rate: a number with an optional K, M or G (binary units), e.g. 500K or 10M. Both protocols'
            cand --parallel 'Send over N connections at once, each taking the next file (or the next run of small files) as it is free; the bars show the whole run. Protocol 4 only. With --limit-rate, the rate is shared among them'
            cand -v 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged'
            cand --verbose 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged'
            cand -q 'No progress bar and no summary lines (errors are still printed)'
            cand --quiet 'No progress bar and no summary lines (errors are still printed)'
            cand --json 'Print one JSON object per file on stdout, in argument order, then a summary object (the schema is in docs/json.md)'
            cand -r 'Send folders: every regular file under each DIR, stored as DIR''s name and its path below it. Symbolic links and special files are skipped with a note (never followed), empty folders too. Protocol 4 only'
            cand --recursive 'Send folders: every regular file under each DIR, stored as DIR''s name and its path below it. Symbolic links and special files are skipped with a note (never followed), empty folders too. Protocol 4 only'
            cand --dry-run 'Send nothing: print what would be sent, which stored files it would replace and what the server would refuse: a file/folder conflict, --no-clobber, the quota (with --json, one object per file). Protocol 4 only (protocol 3 cannot list what is stored)'
            cand --no-clobber 'Never replace a stored file: a file whose name is taken on the server is refused (reported, exit 4) and the others are sent. Protocol 4 only'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'securexfer;ls'= {
            cand --config 'Configuration file (default $XDG_CONFIG_HOME/securexfer/config.toml, if it exists): keys are the long flags (`server = "files.example.org"`). Flags and SECUREXFER_* variables win over it'
            cand --server 'Server address as HOST:PORT; the port defaults to 1357. Default: line 1 of transfer.info, else the server of the latest `register`'
            cand --name 'Client name to register (default: line 2 of transfer.info)'
            cand --identity 'The identity file (me.info; priv.key is kept beside it). Default: me.info in the working directory if there is one (the existing client''s), else this server''s identity in $XDG_CONFIG_HOME/securexfer/servers/HOST_PORT/ (~/.config/securexfer)'
            cand --connect-timeout 'Seconds to wait for a connection'
            cand --timeout 'Seconds to wait for the server on each read or write'
            cand --protocol 'Which protocol to speak. `auto` opens with protocol 4 (TLS 1.3, the server''s key checked against known_servers) and falls back to protocol 3, with a warning, only for a server never seen speaking 4 that does not speak it. `3` is refused (exit 8) for a server known to speak 4; `4` never falls back'
            cand --server-fingerprint 'The key the server must present over protocol 4, as `securexfer db fingerprint` shows it on the server (SHA256:...): pins it before the first contact. With a key already in known_servers, the two must agree'
            cand -v 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged'
            cand --verbose 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged'
            cand --bytes 'Print sizes as byte counts, not in binary units (1.5 MiB)'
            cand --json 'Print one JSON object per file on stdout, then a summary object (docs/json.md)'
            cand -q 'Print nothing but errors (the exit code says whether every pattern matched)'
            cand --quiet 'Print nothing but errors (the exit code says whether every pattern matched)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'securexfer;get'= {
            cand -o 'Where to write them: a directory that exists, or - for stdout'
            cand --output 'Where to write them: a directory that exists, or - for stdout'
            cand --limit-rate 'Receive file content at most RATE bytes per second, as curl''s --limit-rate: a number with an optional K, M or G (binary units), e.g. 500K or 10M'
            cand --config 'Configuration file (default $XDG_CONFIG_HOME/securexfer/config.toml, if it exists): keys are the long flags (`server = "files.example.org"`). Flags and SECUREXFER_* variables win over it'
            cand --server 'Server address as HOST:PORT; the port defaults to 1357. Default: line 1 of transfer.info, else the server of the latest `register`'
            cand --name 'Client name to register (default: line 2 of transfer.info)'
            cand --identity 'The identity file (me.info; priv.key is kept beside it). Default: me.info in the working directory if there is one (the existing client''s), else this server''s identity in $XDG_CONFIG_HOME/securexfer/servers/HOST_PORT/ (~/.config/securexfer)'
            cand --connect-timeout 'Seconds to wait for a connection'
            cand --timeout 'Seconds to wait for the server on each read or write'
            cand --protocol 'Which protocol to speak. `auto` opens with protocol 4 (TLS 1.3, the server''s key checked against known_servers) and falls back to protocol 3, with a warning, only for a server never seen speaking 4 that does not speak it. `3` is refused (exit 8) for a server known to speak 4; `4` never falls back'
            cand --server-fingerprint 'The key the server must present over protocol 4, as `securexfer db fingerprint` shows it on the server (SHA256:...): pins it before the first contact. With a key already in known_servers, the two must agree'
            cand -r 'Download folders: every file under each NAME (a NAME that is a file is that file)'
            cand --recursive 'Download folders: every file under each NAME (a NAME that is a file is that file)'
            cand --force 'Replace a local file of the same name'
            cand -v 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged'
            cand --verbose 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged'
            cand --json 'Print one JSON object per file on stdout (stderr with -o -), then a summary object (docs/json.md)'
            cand -q 'Print nothing but errors'
            cand --quiet 'Print nothing but errors'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'securexfer;rm'= {
            cand --config 'Configuration file (default $XDG_CONFIG_HOME/securexfer/config.toml, if it exists): keys are the long flags (`server = "files.example.org"`). Flags and SECUREXFER_* variables win over it'
            cand --server 'Server address as HOST:PORT; the port defaults to 1357. Default: line 1 of transfer.info, else the server of the latest `register`'
            cand --name 'Client name to register (default: line 2 of transfer.info)'
            cand --identity 'The identity file (me.info; priv.key is kept beside it). Default: me.info in the working directory if there is one (the existing client''s), else this server''s identity in $XDG_CONFIG_HOME/securexfer/servers/HOST_PORT/ (~/.config/securexfer)'
            cand --connect-timeout 'Seconds to wait for a connection'
            cand --timeout 'Seconds to wait for the server on each read or write'
            cand --protocol 'Which protocol to speak. `auto` opens with protocol 4 (TLS 1.3, the server''s key checked against known_servers) and falls back to protocol 3, with a warning, only for a server never seen speaking 4 that does not speak it. `3` is refused (exit 8) for a server known to speak 4; `4` never falls back'
            cand --server-fingerprint 'The key the server must present over protocol 4, as `securexfer db fingerprint` shows it on the server (SHA256:...): pins it before the first contact. With a key already in known_servers, the two must agree'
            cand -r 'Remove folders: every file under each NAME, each kept as a version as a single rm keeps one (a NAME that is a file is that file)'
            cand --recursive 'Remove folders: every file under each NAME, each kept as a version as a single rm keeps one (a NAME that is a file is that file)'
            cand -v 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged'
            cand --verbose 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged'
            cand --json 'Print one JSON object per file on stdout, then a summary object (docs/json.md)'
            cand -q 'Print nothing but errors'
            cand --quiet 'Print nothing but errors'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'securexfer;db'= {
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
            cand inspect 'Show clients, files and kept versions, read-only (safe while the server runs), from a SQLite file or a postgres:// address, checking each file against a local storage directory or an s3:// object store (listed, never written). Sizes are in binary units (--bytes for byte counts); on a terminal, long names are cut with an ellipsis to fit its width (never in a pipe or a file)'
            cand verify 'Re-read every stored file and kept version and check it against its record (size and cksum): reports missing, changed and unrecorded files. Read-only. Exit 5 if any'
            cand restore 'Put an earlier version of a stored file back; the current one becomes a version in turn. Run it with the server stopped (it refuses while one holds the storage)'
            cand fingerprint 'Print the fingerprint of the server''s key (`SHA256:...`, kept in DB.key beside the database, or in a PostgreSQL database itself), for clients to pin before their first contact. Exit 6 if there is no key yet (`serve` makes it at its first start)'
            cand invite 'Make an invitation for `serve --registration token`: prints a single-use token (`sxi-` and 26 characters) for one protocol-4 client to register with. The database keeps only its SHA-256, its name and expiry, and when and by whom it was used'
            cand quota 'Show or set a client''s quota: the bytes its files, kept versions and open uploads may take and how many files it may store. Checked by protocol 4 before any content of an upload is accepted (protocol 3 uploads are not counted against it). Safe while the server runs; new uploads see a change at once'
            cand migrate 'Move a single machine''s records and files to PostgreSQL and an object store (the configuration of many `serve` instances): every client, key, quota, invitation, file and kept version, each file hashed on the way and read back from the store. Safe while the server runs, and re-runnable: a second run moves only what is not there yet as the source has it. Exit 5 if a file is not what its record says'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'securexfer;db;inspect'= {
            cand --db 'The server''s database: a SQLite file, or postgres://USER:PASSWORD@HOST:PORT/DB (only read: its schema must be this version''s, which `serve` migrates to)'
            cand --storage 'Storage directory, or s3://BUCKET/PREFIX (endpoint and credentials from the AWS_* variables, as for serve), to check that recorded files are present'
            cand --client 'Show only this client (name or id). A name or id that matches no client is an error (exit 2)'
            cand --bytes 'Print sizes as byte counts, not in binary units (1.50 MiB)'
            cand --json 'Print JSON instead of tables (sizes are always byte counts there)'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'securexfer;db;verify'= {
            cand --db 'The server''s database'
            cand --storage 'The storage directory'
            cand --json 'Print one JSON document instead of lines'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'securexfer;db;restore'= {
            cand --db 'The server''s database'
            cand --storage 'The server''s storage directory'
            cand --client 'The client (name or id)'
            cand --file 'The file, by its stored name (or the name the client sent)'
            cand --version 'Which version (as `db inspect` numbers them); default: the newest'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'securexfer;db;fingerprint'= {
            cand --db 'The server''s database (the key is DB.key beside it), or postgres://… (the key every instance over it presents, kept in it)'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'securexfer;db;invite'= {
            cand --db 'The server''s database: a SQLite file, or a `postgres://` address (every instance over it takes the token)'
            cand --name 'The client name the token is for: registering with it under another name is refused. Without it, any name'
            cand --expires 'How long the token is valid: a number with s, m, h or d (seconds, minutes, hours, days)'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'securexfer;db;quota'= {
            cand --db 'The server''s database: a SQLite file, or postgres://… (every instance over it sees a change at its next upload)'
            cand --client 'The client (name or id)'
            cand --bytes 'Set the bytes quota: a size with an optional K, M, G or T (binary units), or `none`'
            cand --files 'Set the files quota: a number, or `none`'
            cand --json 'Print JSON instead of lines (sizes are byte counts there)'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'securexfer;db;migrate'= {
            cand --from 'What to move: the SQLite database and the storage directory of one server'
            cand --to 'Where to: the PostgreSQL database and the object store (endpoint and credentials from the AWS_* variables, as for serve). The schema is migrated if need be'
            cand --json 'Print one JSON document instead of lines'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'securexfer;db;help'= {
            cand inspect 'Show clients, files and kept versions, read-only (safe while the server runs), from a SQLite file or a postgres:// address, checking each file against a local storage directory or an s3:// object store (listed, never written). Sizes are in binary units (--bytes for byte counts); on a terminal, long names are cut with an ellipsis to fit its width (never in a pipe or a file)'
            cand verify 'Re-read every stored file and kept version and check it against its record (size and cksum): reports missing, changed and unrecorded files. Read-only. Exit 5 if any'
            cand restore 'Put an earlier version of a stored file back; the current one becomes a version in turn. Run it with the server stopped (it refuses while one holds the storage)'
            cand fingerprint 'Print the fingerprint of the server''s key (`SHA256:...`, kept in DB.key beside the database, or in a PostgreSQL database itself), for clients to pin before their first contact. Exit 6 if there is no key yet (`serve` makes it at its first start)'
            cand invite 'Make an invitation for `serve --registration token`: prints a single-use token (`sxi-` and 26 characters) for one protocol-4 client to register with. The database keeps only its SHA-256, its name and expiry, and when and by whom it was used'
            cand quota 'Show or set a client''s quota: the bytes its files, kept versions and open uploads may take and how many files it may store. Checked by protocol 4 before any content of an upload is accepted (protocol 3 uploads are not counted against it). Safe while the server runs; new uploads see a change at once'
            cand migrate 'Move a single machine''s records and files to PostgreSQL and an object store (the configuration of many `serve` instances): every client, key, quota, invitation, file and kept version, each file hashed on the way and read back from the store. Safe while the server runs, and re-runnable: a second run moves only what is not there yet as the source has it. Exit 5 if a file is not what its record says'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'securexfer;db;help;inspect'= {
        }
        &'securexfer;db;help;verify'= {
        }
        &'securexfer;db;help;restore'= {
        }
        &'securexfer;db;help;fingerprint'= {
        }
        &'securexfer;db;help;invite'= {
        }
        &'securexfer;db;help;quota'= {
        }
        &'securexfer;db;help;migrate'= {
        }
        &'securexfer;db;help;help'= {
        }
        &'securexfer;trust'= {
            cand --server 'Server address as HOST:PORT; the port defaults to 1357. Default: the server of the latest `register`'
            cand --fingerprint 'The key the server must present, as `securexfer db fingerprint` shows it on the server (SHA256:...): pins it before the first contact, or accepts a new key the operator confirmed'
            cand --server-fingerprint 'The key the server must present, as `securexfer db fingerprint` shows it on the server (SHA256:...): pins it before the first contact, or accepts a new key the operator confirmed'
            cand --connect-timeout 'Seconds to wait for the connection and the handshake'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'securexfer;completions'= {
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'securexfer;man'= {
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'securexfer;help'= {
            cand serve 'Run the storage server'
            cand register 'Make a key pair, register a name with a server and save the identity'
            cand send 'Send files to a server and verify them (registers first if there is no identity)'
            cand ls 'List this client''s files on a server (protocol 4): size, when stored, BLAKE3 (the first 16 hex digits) and kept versions, in byte order of their names'
            cand get 'Download stored files (protocol 4). Each is written to .NAME.securexfer-partial in the target directory and takes its name only once its BLAKE3 matches the server''s; a download cut off leaves that file, and the same get continues it'
            cand rm 'Remove stored files from a server (protocol 4). The server keeps a removed copy as a version, as it keeps a replaced one (serve --keep-versions)'
            cand db 'Read the server''s database'
            cand trust 'Check which key a server presents over protocol 4 (TLS 1.3) and trust it: on first contact the key is trusted and saved in known_servers; later, a different key is a hard failure (exit 8). With --fingerprint, only that key is accepted (and saved)'
            cand completions 'Print the completion script for a shell on stdout'
            cand man 'Write the man pages (one per command) into a directory'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'securexfer;help;serve'= {
        }
        &'securexfer;help;register'= {
        }
        &'securexfer;help;send'= {
        }
        &'securexfer;help;ls'= {
        }
        &'securexfer;help;get'= {
        }
        &'securexfer;help;rm'= {
        }
        &'securexfer;help;db'= {
            cand inspect 'Show clients, files and kept versions, read-only (safe while the server runs), from a SQLite file or a postgres:// address, checking each file against a local storage directory or an s3:// object store (listed, never written). Sizes are in binary units (--bytes for byte counts); on a terminal, long names are cut with an ellipsis to fit its width (never in a pipe or a file)'
            cand verify 'Re-read every stored file and kept version and check it against its record (size and cksum): reports missing, changed and unrecorded files. Read-only. Exit 5 if any'
            cand restore 'Put an earlier version of a stored file back; the current one becomes a version in turn. Run it with the server stopped (it refuses while one holds the storage)'
            cand fingerprint 'Print the fingerprint of the server''s key (`SHA256:...`, kept in DB.key beside the database, or in a PostgreSQL database itself), for clients to pin before their first contact. Exit 6 if there is no key yet (`serve` makes it at its first start)'
            cand invite 'Make an invitation for `serve --registration token`: prints a single-use token (`sxi-` and 26 characters) for one protocol-4 client to register with. The database keeps only its SHA-256, its name and expiry, and when and by whom it was used'
            cand quota 'Show or set a client''s quota: the bytes its files, kept versions and open uploads may take and how many files it may store. Checked by protocol 4 before any content of an upload is accepted (protocol 3 uploads are not counted against it). Safe while the server runs; new uploads see a change at once'
            cand migrate 'Move a single machine''s records and files to PostgreSQL and an object store (the configuration of many `serve` instances): every client, key, quota, invitation, file and kept version, each file hashed on the way and read back from the store. Safe while the server runs, and re-runnable: a second run moves only what is not there yet as the source has it. Exit 5 if a file is not what its record says'
        }
        &'securexfer;help;db;inspect'= {
        }
        &'securexfer;help;db;verify'= {
        }
        &'securexfer;help;db;restore'= {
        }
        &'securexfer;help;db;fingerprint'= {
        }
        &'securexfer;help;db;invite'= {
        }
        &'securexfer;help;db;quota'= {
        }
        &'securexfer;help;db;migrate'= {
        }
        &'securexfer;help;trust'= {
        }
        &'securexfer;help;completions'= {
        }
        &'securexfer;help;man'= {
        }
        &'securexfer;help;help'= {
        }
    ]
    $completions[$command]
}
