"""``migrate --create-worker-role`` refuses existing roles with powers workers must not have."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from shardflow.errors import MigrationError
from shardflow.sql.roles import ensure_worker_role
from shardflow.testing import TestCluster
from shardflow.testing.servers import with_database

_names = itertools.count()


def _admins(test_cluster: TestCluster) -> list[str]:
    # One entry per server, however many shards share it.
    return list(dict.fromkeys(admin for admin, _ in test_cluster.databases))


def _execute_everywhere(test_cluster: TestCluster, statement: sql.Composed) -> None:
    for admin in _admins(test_cluster):
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(statement)


@pytest.fixture
def role(test_cluster: TestCluster) -> Iterator[str]:
    """A role name unused on every server; the role (and what it was granted) is dropped."""
    name = f"sf_worker_{os.getpid()}_{next(_names)}"
    yield name
    ident = sql.Identifier(name)
    for admin, dbname in test_cluster.databases:
        with (
            contextlib.suppress(psycopg.errors.UndefinedObject),
            psycopg.connect(with_database(admin, dbname), autocommit=True) as conn,
        ):
            conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
    _execute_everywhere(test_cluster, sql.SQL("DROP ROLE IF EXISTS {}").format(ident))


def _create_role(test_cluster: TestCluster, name: str, options: str = "") -> None:
    # `options` is one of this file's constants, never user input.
    statement = sql.SQL("CREATE ROLE {} LOGIN " + options).format(sql.Identifier(name))
    _execute_everywhere(test_cluster, statement)


@pytest.mark.parametrize("attribute", ["SUPERUSER", "CREATEROLE", "REPLICATION", "BYPASSRLS"])
def test_defect10_role_with_a_dangerous_attribute_is_refused(
    test_cluster: TestCluster, role: str, attribute: str
) -> None:
    _create_role(test_cluster, role, attribute)

    with pytest.raises(MigrationError) as caught:
        ensure_worker_role(test_cluster.config, role)

    message = str(caught.value)
    assert attribute in message and role in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "predefined", ["pg_execute_server_program", "pg_read_server_files", "pg_write_server_files"]
)
def test_defect10_member_of_a_server_file_or_program_role_is_refused(
    test_cluster: TestCluster, role: str, predefined: str
) -> None:
    _create_role(test_cluster, role)
    grant = sql.SQL("GRANT {} TO {}").format(sql.Identifier(predefined), sql.Identifier(role))
    _execute_everywhere(test_cluster, grant)

    with pytest.raises(MigrationError, match=f"is a member of {predefined}"):
        ensure_worker_role(test_cluster.config, role)


def test_defect10_transitive_membership_in_pg_execute_server_program_is_refused(
    test_cluster: TestCluster, role: str
) -> None:
    group = f"{role}_group"
    _create_role(test_cluster, role)
    _execute_everywhere(
        test_cluster, sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(group))
    )
    try:
        for granted, member in (("pg_execute_server_program", group), (group, role)):
            grant = sql.SQL("GRANT {} TO {}").format(
                sql.Identifier(granted), sql.Identifier(member)
            )
            _execute_everywhere(test_cluster, grant)

        with pytest.raises(MigrationError) as caught:
            ensure_worker_role(test_cluster.config, role)

        assert "pg_execute_server_program" in str(caught.value)
        assert group in str(caught.value)
    finally:
        _execute_everywhere(test_cluster, sql.SQL("DROP ROLE {}").format(sql.Identifier(group)))


def test_defect10_member_of_a_createrole_group_is_refused(
    test_cluster: TestCluster, role: str
) -> None:
    group = f"{role}_admins"
    _create_role(test_cluster, role)
    _execute_everywhere(
        test_cluster, sql.SQL("CREATE ROLE {} NOLOGIN CREATEROLE").format(sql.Identifier(group))
    )
    try:
        grant = sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(role))
        _execute_everywhere(test_cluster, grant)

        with pytest.raises(MigrationError, match="which has CREATEROLE"):
            ensure_worker_role(test_cluster.config, role)
    finally:
        _execute_everywhere(test_cluster, sql.SQL("DROP ROLE {}").format(sql.Identifier(group)))


def test_defect10_plain_existing_role_is_accepted_and_granted(
    test_cluster: TestCluster, role: str
) -> None:
    _create_role(test_cluster, role)

    reports = ensure_worker_role(test_cluster.config, role)

    assert [r.shard for r in reports] == list(test_cluster.config.shard_names)
    assert not any(r.created for r in reports)
    admin, dbname = test_cluster.databases[0]
    with psycopg.connect(with_database(admin, dbname)) as conn:
        row = conn.execute(
            "SELECT has_table_privilege(%s, 'shardflow.step_outputs', 'INSERT')", (role,)
        ).fetchone()
    assert row == (True,)


def test_defect10_new_role_is_created_and_accepted(test_cluster: TestCluster, role: str) -> None:
    reports = ensure_worker_role(test_cluster.config, role)

    assert reports[0].created
