
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
            cand db 'Read the server''s database'
            cand completions 'Print the completion script for a shell on stdout'
            cand man 'Write the man pages (one per command) into a directory'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'securexfer;serve'= {
            cand --listen 'Address to listen on. The default accepts only this machine; use 0.0.0.0 (or ::) to accept remote clients'
            cand --port 'Port to listen on (0 picks a free one, printed at start-up)'
            cand --storage 'Directory where received files are stored, one subdirectory per client id'
            cand --db 'SQLite database of clients and files'
            cand --max-file-size 'Largest file accepted (encrypted size; suffixes K, M, G). Larger uploads are refused before anything is read. The protocol''s own limit is 4G minus 16 bytes'
            cand --max-connections 'Most simultaneous connections; further clients wait until one ends'
            cand --idle-timeout 'Seconds a client may stay silent, between requests or in the middle of one'
            cand --session-window 'Seconds after a key exchange during which a client that opens one connection per request may send and confirm files from the same IP address'
            cand --grace 'Seconds transfers in flight may run on after SIGINT or SIGTERM'
            cand --disk-reserve 'Free space to keep on the storage file system; uploads that would eat into it are refused (suffixes K, M, G)'
            cand --compat 'Serve an existing client that deviates from the protocol. `crc32-ciphertext`: to clients whose requests carry version byte 1 (the `dor` client; nobody else sends it), answer 1028 with the zlib CRC-32 of the ciphertext received, as that client checks, and answer its 1030 with 2104, as it waits for one. Every other client gets exactly the protocol'
            cand --registrations-per-minute 'Registrations one IP address (IPv6: one /64) may make per minute, in bursts of up to twice as many; more get 2107. 0 turns the limit off'
            cand --strict-sessions 'Serve file requests only on the connection that made the key exchange (refuses clients that open one connection per request)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'securexfer;register'= {
            cand --server 'Server address as HOST:PORT; the port defaults to 1357. Default: line 1 of transfer.info, else the server of the latest `register`'
            cand --name 'Client name to register (default: line 2 of transfer.info)'
            cand --identity 'The identity file (me.info; priv.key is kept beside it). Default: me.info in the working directory if there is one (the existing client''s), else this server''s identity in $XDG_CONFIG_HOME/securexfer/servers/HOST_PORT/ (~/.config/securexfer)'
            cand --connect-timeout 'Seconds to wait for a connection'
            cand --timeout 'Seconds to wait for the server on each read or write'
            cand -v 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged'
            cand --verbose 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged'
            cand --force 'Replace an existing identity (the old one is kept as me.info.bak)'
            cand -q 'Print nothing on success'
            cand --quiet 'Print nothing on success'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'securexfer;send'= {
            cand --server 'Server address as HOST:PORT; the port defaults to 1357. Default: line 1 of transfer.info, else the server of the latest `register`'
            cand --name 'Client name to register (default: line 2 of transfer.info)'
            cand --identity 'The identity file (me.info; priv.key is kept beside it). Default: me.info in the working directory if there is one (the existing client''s), else this server''s identity in $XDG_CONFIG_HOME/securexfer/servers/HOST_PORT/ (~/.config/securexfer)'
            cand --connect-timeout 'Seconds to wait for a connection'
            cand --timeout 'Seconds to wait for the server on each read or write'
            cand --as 'The name to store the file under, instead of its own (one FILE only). Names are up to 254 bytes of printable ASCII'
            cand -v 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged'
            cand --verbose 'Say what the client does on stderr: connections, requests and answers, retries (-vv for more). Without it, RUST_LOG sets what is logged'
            cand -q 'No progress bar and no summary lines (errors are still printed)'
            cand --quiet 'No progress bar and no summary lines (errors are still printed)'
            cand --json 'Print one JSON object per file on stdout, in argument order, then a summary object (the schema is in docs/json.md)'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'securexfer;db'= {
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
            cand inspect 'Show clients and files, read-only (safe while the server runs)'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'securexfer;db;inspect'= {
            cand --db 'The server''s database'
            cand --storage 'Storage directory, to check that recorded files are present'
            cand --client 'Show only this client (name or id)'
            cand --json 'Print JSON instead of tables'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'securexfer;db;help'= {
            cand inspect 'Show clients and files, read-only (safe while the server runs)'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'securexfer;db;help;inspect'= {
        }
        &'securexfer;db;help;help'= {
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
            cand db 'Read the server''s database'
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
        &'securexfer;help;db'= {
            cand inspect 'Show clients and files, read-only (safe while the server runs)'
        }
        &'securexfer;help;db;inspect'= {
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
