"""The local NodeODM-compatible server behaves like NodeODM, pitfalls included."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import wait_until
from tests.fakes.multipart import MultipartReader, TruncatedBodyError
from tests.fakes.nodeodm import FakeNodeODM

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret"


def fast_node(root: Path, token: str | None = None) -> FakeNodeODM:
    return FakeNodeODM(root, token, setup_s=0.05, queued_s=0.05, running_s=0.2)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[FakeNodeODM]:
    with fast_node(tmp_path) as server:
        yield server


@pytest.fixture
def client(node: FakeNodeODM) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=node.url, timeout=5) as c:
        yield c


def init(client: httpx.Client, headers: dict[str, str] | None = None, **fields: str) -> Any:
    # files= with (None, value) makes httpx send multipart fields, as NodeODM's init requires.
    form = {k: (None, v) for k, v in {"name": "flight", **fields}.items()}
    return client.post("/task/new/init", files=form, headers=headers or {}).json()


def upload(client: httpx.Client, uuid: str, *files: tuple[str, bytes]) -> Any:
    parts = [("images", (name, data)) for name, data in files]
    return client.post(f"/task/new/upload/{uuid}", files=parts).json()


def info(client: httpx.Client, uuid: str) -> Any:
    return client.get(f"/task/{uuid}/info").json()


def wait_code(client: httpx.Client, uuid: str, code: int) -> Any:
    return wait_until(
        lambda: (i := info(client, uuid)).get("status", {}).get("code") == code and i,
        what=f"status {code}",
    )


def test_init_upload_commit_reaches_completed_with_a_real_zip(node, client):
    uuid = init(client, options=json.dumps([{"name": "dsm", "value": True}]))["uuid"]
    a, b = os.urandom(3000), os.urandom(2000)
    assert upload(client, uuid, ("DJI_0001.JPG", a), ("DJI_0002.JPG", b)) == {"success": True}
    assert client.post(f"/task/new/commit/{uuid}").json() == {"uuid": uuid}

    seen: list[int] = []

    def completed() -> bool:
        code = info(client, uuid)["status"]["code"]
        if not seen or seen[-1] != code:
            seen.append(code)
        return bool(code == 40)

    wait_until(completed, what="completion")
    assert seen[-1] == 40
    assert set(seen) <= {10, 20, 40}
    final = info(client, uuid)
    assert final["name"] == "flight"
    assert final["imagesCount"] == 2
    assert final["progress"] == 100
    assert final["processingTime"] > 0
    assert {"name": "dsm", "value": True} in final["options"]
    assert client.get("/task/list").json() == [{"uuid": uuid}]

    response = client.get(f"/task/{uuid}/download/all.zip")
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.testzip() is None
        assert "odm_orthophoto/odm_orthophoto.tif" in archive.namelist()

    view = node.tasks()[uuid]
    assert view.committed
    assert view.status_code == 40
    assert view.commit_calls == 1
    assert view.files["DJI_0001.JPG"].sha256 == hashlib.sha256(a).hexdigest()
    assert view.files["DJI_0002.JPG"].size == len(b)
    assert (
        node.file_path(uuid, "DJI_0001.JPG")
        == node.root / "data" / uuid / "images" / "DJI_0001.JPG"
    )
    assert node.requests["commit"] == 1


def test_same_name_is_stored_again_with_an_underscore_and_counts_as_an_image(node, client):
    uuid = init(client)["uuid"]
    for data in (b"first", b"second", b"third"):
        assert upload(client, uuid, ("DJI_0001.JPG", data)) == {"success": True}
    files = node.tasks()[uuid].files
    assert sorted(files) == ["DJI_0001.JPG", "DJI_0001_.JPG", "DJI_0001__.JPG"]
    assert files["DJI_0001__.JPG"].original_name == "DJI_0001.JPG"
    client.post(f"/task/new/commit/{uuid}")
    assert wait_code(client, uuid, 40)["imagesCount"] == 3


def test_cut_mid_body_leaves_a_truncated_file_that_a_retry_does_not_replace(node, client):
    uuid = init(client)["uuid"]
    data = os.urandom(256 * 1024)
    node.faults.add("cut_mid_body", route="upload")
    with pytest.raises(httpx.TransportError):
        upload(client, uuid, ("IMG_1.JPG", data))
    stored = node.tasks()[uuid].files["IMG_1.JPG"]
    assert stored.truncated
    assert 0 < stored.size < len(data)
    path = node.file_path(uuid, "IMG_1.JPG")
    assert path is not None
    assert path.stat().st_size == stored.size

    assert upload(client, uuid, ("IMG_1.JPG", data)) == {"success": True}
    files = node.tasks()[uuid].files
    assert files["IMG_1_.JPG"].sha256 == hashlib.sha256(data).hexdigest()
    assert node.faults.injected == {"cut_mid_body": 1}
    client.post(f"/task/new/commit/{uuid}")
    assert wait_code(client, uuid, 40)["imagesCount"] == 2


def test_a_client_that_disconnects_mid_upload_leaves_a_truncated_file(node, client):
    uuid = init(client)["uuid"]
    head = (
        b'--BOUNDARY\r\nContent-Disposition: form-data; name="images"; filename="CUT.JPG"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n"
    )
    data = os.urandom(100_000)
    body = head + data + b"\r\n--BOUNDARY--\r\n"
    request = (
        f"POST /task/new/upload/{uuid} HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: multipart/form-data; boundary=BOUNDARY\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(request + body[: len(head) + 40_000])
    view = wait_until(
        lambda: (f := node.tasks()[uuid].files.get("CUT.JPG")) is not None and f.truncated and f,
        what="the truncated file",
    )
    assert view.size == 40_000
    assert view.sha256 == hashlib.sha256(data[:40_000]).hexdigest()


def test_chunked_upload_is_stored_whole(node, client):
    uuid = init(client)["uuid"]
    data = os.urandom(3 * 1024 * 1024 + 17)

    def body() -> Iterator[bytes]:
        yield b"--xyz\r\n"
        yield b'Content-Disposition: form-data; name="images"; filename="dir/C.JPG"\r\n\r\n'
        for start in range(0, len(data), 100_000):
            yield data[start : start + 100_000]
        yield b"\r\n--xyz--\r\n"

    response = client.post(
        f"/task/new/upload/{uuid}",
        content=body(),
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert response.json() == {"success": True}
    stored = node.tasks()[uuid].files["C.JPG"]  # busboy keeps the base name only
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert not stored.truncated


def test_errors_come_back_as_http_200(node, client):
    unknown = "0b7ee6e2-4a2b-4b39-9d6e-6f4a5d6f1c11"
    response = client.post(f"/task/new/upload/{unknown}", files=[("images", ("a.JPG", b"x"))])
    assert response.status_code == 200
    assert response.json() == {"error": "Invalid uuid (not found)"}
    assert client.post(f"/task/new/commit/{unknown}").json() == {
        "error": "Invalid uuid (not found)"
    }

    uuid = init(client)["uuid"]
    assert info(client, uuid) == {"error": f"{uuid} not found"}  # not in the task manager yet
    no_files = client.post(f"/task/new/upload/{uuid}", files={"other": (None, "x")}).json()
    assert no_files == {"error": "Need at least 1 file.", "noRetry": True}
    wrong_field = client.post(f"/task/new/upload/{uuid}", files=[("image", ("a.JPG", b"x"))])
    assert wrong_field.json() == {"error": "Unexpected field"}
    assert node.tasks()[uuid].files == {}
    bad_options = init(client, options=json.dumps([{"name": "feature-quality", "value": "x"}]))
    assert bad_options == {
        "error": '[{"name":"feature-quality","error":"Invalid value x (not in enum)"}]'
    }
    assert client.post("/task/remove", data={"uuid": uuid}).json() == {
        "success": False,
        "error": f"{uuid} not found",
    }
    assert client.post("/task/cancel", json={"uuid": uuid}).json() == {
        "error": "uuid param missing."
    }
    missing = client.get("/no/such/route")
    assert missing.status_code == 404
    assert "Cannot GET /no/such/route" in missing.text


def test_upload_and_second_commit_refused_after_commit(node, client):
    uuid = init(client)["uuid"]
    upload(client, uuid, ("a.JPG", b"a"), ("b.JPG", b"b"))
    assert client.post(f"/task/new/commit/{uuid}").json() == {"uuid": uuid}
    assert upload(client, uuid, ("c.JPG", b"c")) == {"error": "Invalid uuid (not found)"}
    assert client.post(f"/task/new/commit/{uuid}").json() == {"error": "Invalid uuid (not found)"}
    assert node.tasks()[uuid].commit_calls == 2
    assert sorted(node.tasks()[uuid].files) == ["a.JPG", "b.JPG"]


def test_commit_without_files_is_refused_and_spends_the_uuid(client):
    uuid = init(client)["uuid"]
    assert client.post(f"/task/new/commit/{uuid}").json() == {"error": "Need at least 1 file."}
    assert upload(client, uuid, ("a.JPG", b"a")) == {"error": "Invalid uuid (not found)"}


def test_token_is_required_in_the_query_string(tmp_path):
    with (
        fast_node(tmp_path, TOKEN) as node,
        httpx.Client(base_url=node.url) as c,
    ):
        denied = {"error": "Invalid authentication token: token does not match."}
        assert c.get("/info").json() == denied
        assert c.get("/info", headers={"Authorization": f"Bearer {TOKEN}"}).json() == denied
        assert c.get("/info", params={"token": "wrong"}).json() == denied
        assert c.get("/info", params={"token": TOKEN}).json()["engine"] == "odm"
        uuid = c.post(
            "/task/new/init", params={"token": TOKEN}, files={"name": (None, "t")}
        ).json()["uuid"]
        refused = c.post(f"/task/new/upload/{uuid}", files=[("images", ("a.JPG", b"x"))])
        assert refused.json() == denied
        assert node.tasks()[uuid].files == {}


def test_set_uuid_is_honoured_and_refused_once_committed(node, client):
    chosen = "5d0e6f1a-8a8e-4c51-9a3b-2f7d1e0c9b44"
    assert init(client, headers={"set-uuid": chosen})["uuid"] == chosen
    assert init(client, headers={"set-uuid": "not-a-uuid"}) == {
        "error": "Invalid set-uuid: not-a-uuid"
    }
    upload(client, chosen, ("a.JPG", b"a"))
    # Before commit the same uuid is accepted again, and the files already there stay.
    assert init(client, headers={"set-uuid": chosen})["uuid"] == chosen
    assert list(node.tasks()[chosen].files) == ["a.JPG"]
    assert node.tasks()[chosen].init_calls == 2
    client.post(f"/task/new/commit/{chosen}")
    assert init(client, headers={"set-uuid": chosen}) == {"error": f"Invalid set-uuid: {chosen}"}


def test_urlencoded_init_fields_are_ignored(node, client):
    uuid = client.post("/task/new/init", data={"name": "lost"}).json()["uuid"]
    upload(client, uuid, ("a.JPG", b"a"), ("b.JPG", b"b"))
    client.post(f"/task/new/commit/{uuid}")
    assert "name" not in wait_code(client, uuid, 40)


def test_too_few_images_fails_like_odm(node, client):
    uuid = init(client)["uuid"]
    upload(client, uuid, ("only.JPG", b"a"))
    client.post(f"/task/new/commit/{uuid}")
    failed = wait_code(client, uuid, 30)
    assert failed["status"]["errorMessage"] == "Cannot process dataset"
    assert failed["progress"] == 100
    output = client.get(f"/task/{uuid}/output").json()
    assert any("Not enough supported images" in line for line in output)
    assert client.get(f"/task/{uuid}/download/all.zip").json() == {"error": "Asset not ready"}


def test_max_images_and_processing_failure(node, client):
    node.max_images = 1
    uuid = init(client)["uuid"]
    upload(client, uuid, ("a.JPG", b"a"), ("b.JPG", b"b"))
    client.post(f"/task/new/commit/{uuid}")
    message = "2 images uploaded, but this node can only process up to 1."
    assert wait_code(client, uuid, 30)["status"]["errorMessage"] == message

    node.max_images = None
    node.fail_processing = True
    uuid = init(client)["uuid"]
    upload(client, uuid, ("a.JPG", b"a"), ("b.JPG", b"b"))
    client.post(f"/task/new/commit/{uuid}")
    assert wait_code(client, uuid, 30)["status"]["errorMessage"] == "Cannot process dataset"
    assert node.tasks()[uuid].error_message == "Cannot process dataset"


def test_cancel_remove_and_list(node, client):
    node.running_s = 30
    uuid = init(client)["uuid"]
    upload(client, uuid, ("a.JPG", b"a"), ("b.JPG", b"b"))
    client.post(f"/task/new/commit/{uuid}")
    wait_until(lambda: node.tasks()[uuid].progress > 0, what="processing to start")
    assert client.post("/task/cancel", data={"uuid": uuid}).json() == {"success": True}
    assert info(client, uuid)["status"] == {"code": 50}
    assert client.post("/task/remove", data={"uuid": uuid}).json() == {"success": True}
    assert info(client, uuid) == {"error": f"{uuid} not found"}
    assert client.get("/task/list").json() == []
    assert node.tasks()[uuid].removed
    assert not (node.root / "data" / uuid).exists()


def test_injected_http_faults(node, client):
    node.faults.add("status500", route="upload", times=2)
    node.faults.add("error200", route="init", message="ENOSPC: no space left on device")
    node.faults.add("garbage", route="node_info")
    assert client.post("/task/new/init", files={"name": (None, "x")}).json() == {
        "error": "ENOSPC: no space left on device"
    }
    assert node.tasks() == {}
    uuid = init(client)["uuid"]
    for _ in range(2):
        response = client.post(f"/task/new/upload/{uuid}", files=[("images", ("a.JPG", b"x"))])
        assert response.status_code == 500
    assert upload(client, uuid, ("a.JPG", b"x")) == {"success": True}
    assert list(node.tasks()[uuid].files) == ["a.JPG"]
    garbage = client.get("/info")
    assert garbage.status_code == 200
    assert garbage.headers["content-type"].startswith("text/html")
    assert node.faults.injected == {"status500": 2, "error200": 1, "garbage": 1}
    assert node.requests["upload"] == 3


def test_cut_after_body_acts_but_never_answers(node, client):
    uuid = init(client)["uuid"]
    upload(client, uuid, ("a.JPG", b"a"), ("b.JPG", b"b"))
    node.faults.add("cut_after_body", route="commit")
    with pytest.raises(httpx.TransportError):
        client.post(f"/task/new/commit/{uuid}")
    assert node.tasks()[uuid].committed
    assert client.post(f"/task/new/commit/{uuid}").json() == {"error": "Invalid uuid (not found)"}


def test_stall_ends_promptly_when_the_server_stops(tmp_path):
    node = fast_node(tmp_path).start()
    try:
        node.faults.add("stall", route="node_info", delay_s=60)
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{node.url}/info", timeout=0.3)
    finally:
        stopper = threading.Thread(target=node.stop)
        stopper.start()
        stopper.join(timeout=10)  # the stall (60 s) is cut short, not waited out
    assert not stopper.is_alive()


def test_random_faults_are_reproducible(tmp_path):
    counts = []
    for run in range(2):
        with fast_node(tmp_path / str(run)) as node, httpx.Client(base_url=node.url) as c:
            node.faults.random(
                rate=0.5, kinds=["status500", "error200"], routes=["node_info"], seed=7
            )
            for _ in range(20):
                c.get("/info")
            c.get("/options")
            counts.append(node.faults.injected)
    assert counts[0] == counts[1]
    assert 0 < sum(counts[0].values()) < 20


def trickle(source: io.BytesIO, step: int) -> Callable[[int], bytes]:
    """A read function that returns at most ``step`` bytes at a time."""
    return lambda n: source.read(min(n, step))


def test_multipart_reader_handles_boundaries_split_across_reads():
    # Near misses of the delimiter; fixed noise (random noise starts with "y" one time in 256,
    # which makes the first one a real delimiter).
    data = b"A\r\n--boundar" + random.Random(7).randbytes(5000) + b"\r\n--boundarX"
    assert b"\r\n--boundary" not in data
    body = (
        b"preamble\r\n--boundary\r\n"
        b'Content-Disposition: form-data; name="name"\r\n\r\nflight\r\n'
        b"--boundary  \r\n"
        b"Content-Disposition: form-data; name=\"images\"; filename*=UTF-8''%C3%A9t%C3%A9.jpg\r\n"
        b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n--boundary--\r\nepilogue"
    )
    for step in (1, 3, 7, 64, 1 << 20):
        source = io.BytesIO(body)
        reader = MultipartReader(trickle(source, step), b"boundary")
        field = reader.next_part()
        assert field is not None
        assert field.filename is None
        assert field.read_all() == b"flight"
        part = reader.next_part()
        assert part is not None
        assert part.filename == "été.jpg"
        assert b"".join(part.chunks()) == data
        assert reader.next_part() is None


def test_multipart_reader_hands_on_data_before_reporting_truncation():
    body = b'--b\r\nContent-Disposition: form-data; name="images"; filename="x"\r\n\r\n0123456789'
    source = io.BytesIO(body)
    reader = MultipartReader(source.read, b"b")
    part = reader.next_part()
    assert part is not None
    received: list[bytes] = []

    def consume() -> None:
        received.extend(part.chunks())

    with pytest.raises(TruncatedBodyError):
        consume()
    assert b"".join(received) == b"0123456789"


def test_runs_by_hand(tmp_path):
    command = [sys.executable, "-m", "tests.fakes.nodeodm", "--port", "0", "--root", str(tmp_path)]
    with subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            assert httpx.get(f"{url}/info").json()["engine"] == "odm"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0


# -- what a real node (2.2.4, --test mode) was seen doing ---------------------------------------


@pytest.mark.parametrize("style", ["keepalive", "close"])
def test_dropped_uploads_are_answered_500_before_the_body_is_read(tmp_path, style):
    with FakeNodeODM(tmp_path, drop_uploads=1.0, drop_style=style) as server:
        with httpx.Client(base_url=server.url, timeout=5) as c:
            uuid = init(c)["uuid"]
        # Headers announcing a body that is never sent: the answer comes all the same.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(
                f"POST /task/new/upload/{uuid} HTTP/1.1\r\nHost: x\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\n"
                "Content-Length: 100000\r\n\r\n".encode()
            )
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 500 ")
        assert (b"Connection: close" in answer) == (style == "close")
        # A whole upload dropped stores nothing; the task takes the file once it gets through.
        with httpx.Client(base_url=server.url, timeout=5) as c:
            response = c.post(
                f"/task/new/upload/{uuid}", files=[("images", ("DJI_0001.JPG", b"x" * 5000))]
            )
            assert response.status_code == 500
            assert server.tasks()[uuid].files == {}
            server.drop_uploads = 0.0
            assert upload(c, uuid, ("DJI_0001.JPG", b"x" * 5000)) == {"success": True}
        assert list(server.tasks()[uuid].files) == ["DJI_0001.JPG"]
        assert server.dropped == 2


def test_about_half_the_uploads_drop_and_other_routes_never(tmp_path):
    with FakeNodeODM(tmp_path, drop_uploads=0.5, drop_seed=7) as server:
        with httpx.Client(base_url=server.url, timeout=5) as c:
            uuid = init(c)["uuid"]
            codes = [
                c.post(
                    f"/task/new/upload/{uuid}", files=[("images", (f"{n}.JPG", b"y"))]
                ).status_code
                for n in range(200)
            ]
            assert c.get("/info").status_code == 200
        assert 70 < codes.count(500) < 130
        assert len(server.tasks()[uuid].files) == codes.count(200)


def test_removing_a_task_never_committed_is_not_found_and_its_uploads_stay(node, client):
    uuid = init(client)["uuid"]
    upload(client, uuid, ("a.JPG", b"a" * 1000))
    answer = client.post("/task/remove", data={"uuid": uuid}).json()
    assert answer == {"success": False, "error": f"{uuid} not found"}
    assert (node.root / "tmp" / uuid / "a.JPG").stat().st_size == 1000


def test_info_reports_max_images_or_null(node, client):
    assert client.get("/info").json()["maxImages"] is None
    node.max_images = 3
    assert client.get("/info").json()["maxImages"] == 3


def test_test_fail_tasks_gives_an_empty_message_and_output_lines(node, client):
    node.fail_processing = True
    node.fail_message = ""
    uuid = init(client)["uuid"]
    upload(client, uuid, ("a.JPG", b"a"), ("b.JPG", b"b"))
    client.post(f"/task/new/commit/{uuid}")
    failed = wait_code(client, uuid, 30)
    assert failed["status"]["errorMessage"] == ""
    last = client.get(f"/task/{uuid}/output", params={"line": "-2"}).json()
    assert len(last) == 2
    assert last[-1] == "[ERROR]   The program exited with a non-zero status"
