"""``relais token``: make entries of the tokens file (auth.tokens_file, docs/security.md).

    relais token add partner-a --max-streams 4 --file tokens.yaml   # prints the new token ONCE
    echo -n "$TOKEN" | relais token hash                            # the sha256 an entry holds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from relais.cli.common import refuse


def add_parser(sub: argparse._SubParsersAction) -> None:
    tok = sub.add_parser("token", help="make bearer tokens and their tokens-file entries (docs/security.md)")
    actions = tok.add_subparsers(dest="token_command", required=True)
    add = actions.add_parser("add", help="make a random token: print it once, and its entry (appended to --file)")
    add.add_argument("name", help="the token's name (logs and metrics show it, never the token)")
    add.add_argument("--max-streams", type=int, default=0, help="cap on its concurrent streams (default: none)")
    add.add_argument("--expires", help="refused from then on: ISO date or time, e.g. 2027-01-31 (UTC)")
    add.add_argument("--file", type=Path, help="tokens file to append the entry to (created if absent); "
                                               "default: print the entry")
    add.set_defaults(func=run_add)
    hash_ = actions.add_parser("hash", help="read a token on stdin, print its sha256 (the entry's sha256)")
    hash_.set_defaults(func=run_hash)


def run_add(args: argparse.Namespace) -> int:
    import secrets

    import yaml

    from relais.server.auth import hash_token, parse_expiry, read_tokens

    if not args.name.strip():
        return refuse("the token name must not be empty")
    if args.max_streams < 0:
        return refuse(f"--max-streams must be >= 0 (0: no cap), got {args.max_streams}")
    token = secrets.token_urlsafe(32)
    entry: dict = {"name": args.name, "sha256": hash_token(token)}
    if args.max_streams:
        entry["max_streams"] = args.max_streams
    if args.expires:
        try:
            entry["expires"] = parse_expiry(args.expires, "--expires").isoformat()
        except ValueError as exc:
            return refuse(str(exc))
    if args.file is None:
        print(yaml.safe_dump({"tokens": [entry]}, sort_keys=False), end="", file=sys.stderr)
    else:
        try:
            entries = [] if not args.file.exists() else [_entry(e) for e in read_tokens(args.file)]
        except ValueError as exc:
            return refuse(str(exc))
        if any(e["name"] == args.name for e in entries):
            return refuse(f"{args.file} already has a token named {args.name!r}; pick another name or remove it")
        args.file.write_text(yaml.safe_dump({"tokens": [*entries, entry]}, sort_keys=False))
        print(f"added {args.name!r} to {args.file} (the server re-reads it on the next call)", file=sys.stderr)
    print(token)  # stdout: the only copy of the token; give it to the client, it is not stored anywhere
    return 0


def run_hash(args: argparse.Namespace) -> int:
    from relais.server.auth import hash_token

    token = sys.stdin.read().strip()
    if not token:
        return refuse("no token on stdin (e.g. echo -n \"$TOKEN\" | relais token hash)")
    print(hash_token(token))
    return 0


def _entry(entry) -> dict:
    """A TokenEntry as the file writes it (optional keys only when set)."""
    out = {"name": entry.name, "sha256": entry.sha256}
    if entry.max_streams:
        out["max_streams"] = entry.max_streams
    if entry.disabled:
        out["disabled"] = True
    if entry.expires is not None:
        out["expires"] = entry.expires.isoformat()
    return out
