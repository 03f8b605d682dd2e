"""The ``hall`` command: serve the hall, check a catalog file, upgrade the records DB.

Exit codes: 0 success, 1 a checked error (bad catalog, bad configuration; the message is
printed as ``error: ...`` on stderr), 2 a usage error (argparse).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import importlib
import logging
import sys
from pathlib import Path

from aiohttp import web

from rooms.catalog import Catalog, ClerkProfile, load_catalog
from rooms.errors import CatalogError, HallError
from rooms.records import RecordsDB
from server import keys
from server.app import create_app
from server.config import Settings
from server.http_limits import server_options
from signaling.accounts import hash_password

log = logging.getLogger("hall")


def _port(raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {raw!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0..65535: {port}")
    return port


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hall",
        description="Virtual Hall (虚拟政务大厅): remote government service hall.",
        epilog="Configuration comes from HALL_* environment variables; see README.md.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the hall's web server")
    serve.add_argument("--host", help="address to listen on (overrides HALL_HOST)")
    serve.add_argument("--port", type=_port, help="port to listen on (overrides HALL_PORT)")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="demo mode: demo accounts, ephemeral secret key, open at all hours",
    )
    serve.add_argument(
        "--catalog", type=Path, metavar="FILE", help="catalog file (overrides HALL_CATALOG)"
    )

    catalog = commands.add_parser("catalog", help="catalog tools")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True)
    check = catalog_commands.add_parser("check", help="validate a catalog file")
    check.add_argument("file", type=Path, metavar="FILE")

    db = commands.add_parser("db", help="records database tools")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="create or migrate the records database schema")

    commands.add_parser(
        "hash-password",
        help="read a password or kiosk secret on stdin, print its argon2id hash "
        "(for HALL_ACCOUNTS_FILE and HALL_KIOSK_SECRETS_FILE)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "catalog":
            return _catalog_check(args.file)
        if args.command == "hash-password":
            return _hash_password()
        return _db_upgrade()
    except HallError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


def _hash_password() -> int:
    # From stdin, not argv: a password on the command line ends up in shell history and ps.
    if sys.stdin.isatty():
        secret = getpass.getpass("password: ")
    else:
        secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        raise HallError("an empty password cannot be hashed", code="invalid_input")
    print(hash_password(secret))
    return 0


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


def _serve(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if args.catalog is not None and not args.catalog.is_file():
        raise HallError(f"--catalog {args.catalog}: no such file", code="config_invalid")
    settings = dataclasses.replace(
        settings,
        host=settings.host if args.host is None else args.host,
        port=settings.port if args.port is None else args.port,
        catalog_path=settings.catalog_path if args.catalog is None else args.catalog,
    )
    _configure_logging(settings.log_level)

    app = create_app(settings, demo=args.demo)
    settings = app[keys.SETTINGS]  # resolved: the secret key and hours are now fixed
    url = f"http://{_url_host(settings.host)}:{settings.port}/"
    if args.demo:
        password = app[keys.DEMO_PASSWORD]
        assert password is not None  # create_app(demo=True) always sets one
        _print_demo_accounts(app[keys.CATALOG], password)
        _print_demo_kiosk(app, url)
        _print_pages(url)

    def announce(_aiohttp_banner: str) -> None:
        # run_app calls this once the port is bound, so the line is never a false promise.
        print(f"Virtual Hall listening on {url}", flush=True)

    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=announce,
        loop=_new_event_loop(),  # None: asyncio's default loop
        **server_options(settings),  # read timeouts, the redacting access log
    )
    return 0


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"  # a URL someone can click; the server listens on every address
    return f"[{host}]" if ":" in host else host


def _new_event_loop() -> asyncio.AbstractEventLoop | None:
    """A uvloop loop when uvloop is installed (faster sockets); None = asyncio's default."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _print_demo_accounts(catalog: Catalog, password: str) -> None:
    print("Demo accounts (演示账号):")
    print("  clerks (帮办):")
    for clerk in catalog.clerks.values():
        print(f"    {clerk.id}  {clerk.name}  [{_served(catalog, clerk)}]")
    print("  supervisors (主管):")
    for supervisor in catalog.supervisors.values():
        scope = "、".join(
            d.name for d in catalog.departments.values() if d.id in supervisor.departments
        )
        print(f"    {supervisor.id}  {supervisor.name}  [{scope or '全部部门'}]")
    print(f"  password (密码): {password}")


def _print_pages(url: str) -> None:
    print("Pages (页面):")
    print(f"  residents, in the app (居民端): {url}app")
    print(f"  clerk console (帮办工作台):     {url}clerk")
    print(f"  supervisor wallboard (值班大屏): {url}supervisor")


def _print_demo_kiosk(app: web.Application, url: str) -> None:
    """One kiosk's demo device secret and its screen's address with the secret in the
    fragment (read once by the page, never sent to the server in a request)."""
    kiosks = app[keys.KIOSK_KEYS]
    catalog = app[keys.CATALOG]
    if not kiosks.is_demo or not catalog.service_points:
        return  # secrets provisioned from HALL_KIOSK_SECRETS_FILE: nothing to print
    sp_id = "XH-001" if "XH-001" in catalog.service_points else next(iter(catalog.service_points))
    secret = kiosks.demo_secret(sp_id)
    print(f"  kiosk {sp_id} secret: {secret}")
    print(f"  kiosk screen (服务点终端): {url}kiosk/{sp_id}#secret={secret}")


def _served(catalog: Catalog, clerk: ClerkProfile) -> str:
    """The clerk's departments in catalog order, then single matters outside them."""
    parts = [d.name for d in catalog.departments.values() if d.id in clerk.departments]
    parts += [
        m.name
        for m in catalog.matters.values()
        if m.id in clerk.matters and m.department_id not in clerk.departments
    ]
    secondary = [
        d.name for d in catalog.departments.values() if d.id in clerk.secondary_departments
    ]
    text = "、".join(parts)
    if secondary:
        text += "; 兼办 " + "、".join(secondary)
    return text


def _catalog_check(path: Path) -> int:
    try:
        catalog = load_catalog(path)
    except CatalogError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(catalog.summary())
    return 0


def _db_upgrade() -> int:
    settings = Settings.from_env()
    _configure_logging(settings.log_level)
    return asyncio.run(_upgrade(settings))


async def _upgrade(settings: Settings) -> int:
    db = RecordsDB(settings.database_url)
    await db.open()  # opening migrates to the newest schema (and creates a SQLite file's dir)
    try:
        version = await db.schema_version()
    finally:
        await db.close()
    print(f"records database at schema version {version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
