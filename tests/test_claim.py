"""Claiming a conversation (`agentmem.claim`): live, resumed, new or branch, the one decision every surface uses."""

from __future__ import annotations

import pytest

from agentmem.claim import branch_id, claim, is_current
from agentmem.engine import Session
from agentmem.errors import ConfigError, ModelMismatchError, SessionNotFoundError
from agentmem.loading import model_fingerprint
from agentmem.store import Store

from conftest import tiny_chat_gemma3, tiny_chat_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def pair():
    return tiny_chat_llama(seed=0), tiny_tokenizer()


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "claim.db")
    yield store
    store.close()


def stored(store, model, tokenizer, session_id: str, *texts: str) -> Session:
    """A stored session `session_id` holding user messages `texts`, each answered and committed."""
    store.create_session(model="tiny", fingerprint=model_fingerprint(model), session_id=session_id)
    session = Session(model, tokenizer, store=store, session_id=session_id, policy="off")
    for text in texts:
        session.add("user", text)
        session.generate(2)
    return session


def users(messages) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "user"]


def prefix_of(*wanted: str):
    """A `fits` that keeps sessions whose user messages start `wanted` (how many they hold)."""
    def fits(messages):
        held = users(messages)
        return len(held) if list(wanted[:len(held)]) == held else None
    return fits


class Created:
    """A `create` that records what it was asked for."""

    def __init__(self, pair):
        self.pair, self.calls = pair, []

    def __call__(self, session_id, origin):
        self.calls.append((session_id, origin))
        return Session(*self.pair, session_id=session_id, policy="off")


# --------------------------------------------------------------------------- pieces
def test_a_session_is_current_until_another_writer_commits(pair, store):
    assert is_current(Session(*pair, policy="off"))  # nothing stored: nothing newer can exist
    first = stored(store, *pair, "c", "one")
    assert is_current(first)
    second = Session.resume(store, "c", *pair)
    second.add("user", "two")
    second.generate(2)
    assert is_current(second) and not is_current(first)
    store.delete_session("c")
    assert not is_current(second)


def test_branch_ids_count_up_from_two():
    assert branch_id(None, {"x"}) is None and branch_id("c", set()) == "c"
    assert branch_id("c", {"c"}) == "c/2" and branch_id("c", {"c", "c/2", "c/3"}) == "c/4"


# --------------------------------------------------------------------------- the decision
def test_the_live_session_that_fits_most_wins(pair, store):
    short, longer = Session(*pair, policy="off", session_id="a"), Session(*pair, policy="off", session_id="b")
    short.add("user", "one")
    longer.add("user", "one")
    longer.add("user", "two")
    create = Created(pair)
    got = claim(*pair, create=create, session_id="c", live=[short, longer], fits=prefix_of("one", "two", "three"))
    assert got.origin == "live" and got.session is longer and create.calls == []
    got = claim(*pair, create=create, session_id="c", live=[short, longer], fits=prefix_of("one", "other"))
    assert got.session is short


def test_a_stale_live_copy_gives_way_to_the_store(pair, store):
    stale = stored(store, *pair, "c", "one")
    newer = Session.resume(store, "c", *pair)
    newer.add("user", "two")
    newer.generate(2)
    got = claim(*pair, create=Created(pair), store=store, session_id="c", live=[stale])
    assert got.origin == "resumed" and got.session is not stale and users(got.session.messages) == ["one", "two"]


def test_a_stored_session_that_fits_is_resumed_with_its_cache(pair, store):
    stored(store, *pair, "c", "one")
    got = claim(*pair, create=Created(pair), store=store, session_id="c", fits=prefix_of("one", "two"))
    assert got.origin == "resumed" and got.session.id == "c" and got.session.cached > 0


def test_a_conversation_that_does_not_fit_branches(pair, store):
    stored(store, *pair, "c", "one")
    create = Created(pair)
    got = claim(*pair, create=create, store=store, session_id="c", fits=prefix_of("other"), branches=True)
    assert got.origin == "branch" and create.calls == [("c/2", "branch")]
    got = claim(*pair, create=create, store=store, session_id="c", fits=prefix_of("other"), branches=True,
                taken={"c/2"})
    assert create.calls[-1] == ("c/3", "branch")
    got = claim(*pair, create=create, store=store, session_id="fresh", branches=True)
    assert got.origin == "new" and create.calls[-1] == ("fresh", "new")
    got = claim(*pair, create=create)
    assert got.origin == "new" and create.calls[-1] == (None, "new")


def test_another_models_session_is_passed_over_between_branches_and_refused_by_name(pair, store):
    gemma = tiny_chat_gemma3(seed=0)
    stored(store, gemma, pair[1], "c", "one")
    create = Created(pair)
    got = claim(*pair, create=create, store=store, session_id="c", branches=True)
    assert got.origin == "branch" and create.calls == [("c/2", "branch")]
    with pytest.raises(ModelMismatchError):
        claim(*pair, create=create, store=store, session_id="c")


def test_without_create_the_named_session_must_exist(pair, store):
    with pytest.raises(SessionNotFoundError):
        claim(*pair, create=None, store=store, session_id="missing")
    with pytest.raises(ConfigError, match="a store and a session_id are needed"):
        claim(*pair, create=None, session_id="c")
    stored(store, *pair, "c", "one")
    assert claim(*pair, create=None, store=store, session_id="c").origin == "resumed"


# --------------------------------------------------------------------------- forks at a shared prefix
def shares(*wanted: str):
    """A `shared`: how many leading messages of a session are the user messages `wanted` with their replies."""
    def count(messages):
        n = 0
        for m in messages:
            if m["role"] == "user":
                if n // 2 >= len(wanted) or m["content"] != wanted[n // 2]:
                    break
            n += 1
        return n
    return count


def adopted(session, session_id):
    session.id = session_id
    return session


def test_a_branch_forks_the_session_sharing_the_most_messages(pair):
    one, two = Session(*pair, policy="off", session_id="c"), Session(*pair, policy="off", session_id="c/2")
    for session, texts in ((one, ["a", "q"]), (two, ["a", "b", "x"])):
        for text in texts:
            session.add("user", text)
            session.generate(2)
    ids = list(two.ids)
    create = Created(pair)
    got = claim(*pair, create=create, session_id="c", live=[one, two], fits=prefix_of("a", "b", "y"),
                branches=True, taken={"c", "c/2"}, shared=shares("a", "b", "y"), adopt=adopted)
    assert got.origin == "branch" and got.forked_from == "c/2" and got.shared == 4 and create.calls == []
    assert got.session.id == "c/3" and users(got.session.messages) == ["a", "b"] and got.session.store is None
    assert got.session.ids == ids[:len(got.session.ids)] and two.ids == ids


def test_a_stored_session_is_resumed_and_forked_and_its_rows_stay(pair, store):
    stored(store, *pair, "c", "a", "b")
    rows, version = store.messages("c"), store.get_session("c")["version"]
    got = claim(*pair, create=Created(pair), store=store, session_id="c", fits=prefix_of("a", "z"), branches=True,
                shared=shares("a", "z"), adopt=adopted)
    assert got.forked_from == "c" and got.shared == 2 and got.session.cached > 0
    assert users(got.session.messages) == ["a"] and got.session.id == "c/2"
    assert store.messages("c") == rows and store.get_session("c")["version"] == version


def test_a_fork_that_cannot_be_cut_falls_back_to_a_new_session(pair, caplog):
    gemma = tiny_chat_gemma3(seed=0), pair[1]
    base = Session(*gemma, policy="off", session_id="c")
    base.add("user", "a message longer than the sliding window")
    base.generate(3)
    create = Created(gemma)
    with caplog.at_level("INFO", logger="agentmem.claim"):
        got = claim(*gemma, create=create, session_id="c", live=[base], fits=prefix_of("x"), branches=True,
                    taken={"c"}, shared=lambda messages: 1, adopt=adopted)
    assert got.forked_from is None and create.calls == [("c/2", "branch")]
    assert "cannot fork session 'c' at its 1 shared messages" in caplog.text
    with pytest.raises(ConfigError, match="shared needs adopt"):
        claim(*pair, create=create, shared=lambda messages: 1)
