"""The service's store on its own: ids, projects, pagination, transactions, blobs."""

import pytest

from tailor.service.store import Store, new_id


def _file(i: int) -> dict:
    return {"id": new_id("file-"), "object": "file", "created_at": 1000 + i, "purpose": "fine-tune", "n": i}


def test_ids_are_prefixed_and_random():
    ids = {new_id("ftjob-") for _ in range(200)}
    assert len(ids) == 200
    assert all(i.startswith("ftjob-") and i[6:].isalnum() and len(i) == 30 for i in ids)


def test_rows_belong_to_their_project(tmp_path):
    store = Store(tmp_path)
    f = store.put("files", _file(0), project="alpha")
    assert store.get("files", f["id"], project="alpha")["n"] == 0
    assert store.get("files", f["id"], project="beta") is None
    assert not store.delete("files", f["id"], project="beta")
    assert store.delete("files", f["id"], project="alpha")
    assert store.get("files", f["id"]) is None


def test_pages_newest_first_with_after_and_has_more(tmp_path):
    store = Store(tmp_path)
    rows = [store.put("files", _file(i), project="p") for i in range(5)]
    page, more = store.page("files", project="p", limit=2)
    assert [r["n"] for r in page] == [4, 3] and more
    page, more = store.page("files", project="p", limit=2, after=page[-1]["id"])
    assert [r["n"] for r in page] == [2, 1] and more
    page, more = store.page("files", project="p", limit=2, after=page[-1]["id"])
    assert [r["n"] for r in page] == [0] and not more
    assert store.page("files", project="p", after=rows[0]["id"]) == ([], False)  # past the end: empty
    assert store.page("files", project="p", after="file-unknown") == ([], False)
    asc, _ = store.page("files", project="p", limit=10, newest_first=False, where={"n": 3})
    assert [r["n"] for r in asc] == [3]


def test_a_failed_transaction_writes_nothing(tmp_path):
    store = Store(tmp_path)
    f = store.put("files", _file(0), project="p")
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.update("files", f["id"], n=99)
            store.put("files", _file(1), project="p")
            raise RuntimeError("boom")
    assert store.get("files", f["id"])["n"] == 0
    assert len(store.all("files")) == 1


def test_state_survives_a_new_store_on_the_same_folder(tmp_path):
    f = Store(tmp_path).put("files", _file(7), project="p")
    assert Store(tmp_path).get("files", f["id"], project="p")["n"] == 7


@pytest.mark.parametrize("bad", ["../service.db", "/etc/passwd", "blobs/../service.db", "file-x/../../y", "", "."])
def test_unknown_or_path_like_ids_have_no_blob(tmp_path, bad):
    store = Store(tmp_path)
    f = store.put("files", _file(0), project="p")
    store.write_blob(f["id"], b"hello")
    assert store.blob_path("files", f["id"], project="p").read_bytes() == b"hello"
    assert store.blob_path("files", bad) is None
    assert store.blob_path("files", f["id"], project="other") is None
