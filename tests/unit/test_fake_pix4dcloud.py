"""The local PIX4Dcloud server behaves as the client code will rely on."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError

from tests.conftest import wait_until
from tests.fakes.pix4dcloud import FakePix4DCloud, api_fault_plan
from tests.fakes.s3proxy import s3_fault_plan

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

CLIENT_ID = "box-17"
CLIENT_SECRET = "s3cr3t-for-tests"
PROJECTS = "/project/api/v3/projects/"


@pytest.fixture
def cloud() -> Iterator[FakePix4DCloud]:
    with FakePix4DCloud(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, processing_s=(0.1, 0.3)
    ) as fake:
        yield fake


def get_token(cloud: FakePix4DCloud) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    reply = httpx.post(f"{cloud.url}/oauth2/token/", data=form)
    reply.raise_for_status()
    token: str = reply.json()["access_token"]
    return token


@pytest.fixture
def api(cloud: FakePix4DCloud) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {get_token(cloud)}"}
    with httpx.Client(base_url=cloud.url, headers=headers, timeout=10) as client:
        yield client


@pytest.fixture
def s3_clients() -> Iterator[Callable[..., S3Client]]:
    made: list[S3Client] = []

    def make(creds: dict[str, Any], **config: Any) -> S3Client:
        client = boto3.client(
            "s3",
            endpoint_url=creds["endpoint_override"],
            region_name=creds["region"],
            aws_access_key_id=creds["access_key"],
            aws_secret_access_key=creds["secret_key"],
            aws_session_token=creds["session_token"],
            config=Config(s3={"addressing_style": "path"}, **config),
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def new_project(api: httpx.Client, name: str = "quarry 2") -> tuple[int, dict[str, Any]]:
    reply = api.post(PROJECTS, json={"name": name})
    assert reply.status_code == 201
    project_id: int = reply.json()["id"]
    creds = api.get(f"{PROJECTS}{project_id}/s3_credentials/").json()
    return project_id, creds


def upload(s3: S3Client, creds: dict[str, Any], names: list[str]) -> list[str]:
    keys = []
    for name in names:
        key = f"{creds['key']}/{name}"
        s3.put_object(
            Bucket=creds["bucket"],
            Key=key,
            Body=name.encode() * 100,
            ACL="bucket-owner-full-control",
        )
        keys.append(key)
    return keys


def test_token_as_the_demo_client_asks_for_it(cloud: FakePix4DCloud) -> None:
    params = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "token_format": "jwt",
    }
    reply = httpx.post(f"{cloud.url}/oauth2/token/", params=params)
    assert reply.status_code == 200
    body = reply.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] > 0
    assert body["access_token"].count(".") == 2
    assert {"refresh_token", "scope"} <= set(body)

    wrong = httpx.post(f"{cloud.url}/oauth2/token/", data={**params, "client_secret": "nope"})
    assert wrong.status_code == 401
    assert wrong.json() == {"error": "invalid_client"}
    unauthenticated = httpx.get(f"{cloud.url}{PROJECTS}")
    assert unauthenticated.status_code == 401
    assert "detail" in unauthenticated.json()


def test_project_and_scoped_credentials(
    cloud: FakePix4DCloud, api: httpx.Client, s3_clients: Callable[..., S3Client]
) -> None:
    project = api.post(PROJECTS, json={"name": "quarry 2"}).json()
    assert isinstance(project["id"], int)
    assert project["public_status"] == "NEW"
    assert project["bucket_name"] == cloud.bucket
    assert project["s3_base_path"] == f"user-1/project-{project['id']}"
    assert api.get(f"{PROJECTS}{project['id']}/").json()["name"] == "quarry 2"

    creds = api.get(f"{PROJECTS}{project['id']}/s3_credentials/").json()
    assert creds["key"] == project["s3_base_path"]
    assert creds["bucket"] == cloud.bucket
    assert creds["region"] == "us-east-1"
    assert creds["endpoint_override"] == cloud.s3_url
    again = api.get(f"{PROJECTS}{project['id']}/s3_credentials/").json()
    assert again["access_key"] != creds["access_key"]

    s3 = s3_clients(creds)
    (key,) = upload(s3, creds, ["DCIM/100MEDIA/DJI 0001.JPG"])
    data = b"DCIM/100MEDIA/DJI 0001.JPG" * 100
    assert cloud.objects(creds["key"]) == {key: (len(data), hashlib.sha256(data).hexdigest())}
    assert cloud.s3_requests["put_object"] == 1

    with pytest.raises(ClientError) as outside:
        s3.put_object(Bucket=creds["bucket"], Key="user-1/project-1/x.jpg", Body=b"x")
    assert outside.value.response["Error"]["Code"] == "AccessDenied"
    wrong_secret = s3_clients({**creds, "secret_key": "not-the-secret"})
    with pytest.raises(ClientError) as unsigned:
        wrong_secret.head_object(Bucket=creds["bucket"], Key=key)
    assert unsigned.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_multipart_and_presigned_urls_go_through_the_proxy(
    cloud: FakePix4DCloud, api: httpx.Client, s3_clients: Callable[..., S3Client]
) -> None:
    _, creds = new_project(api)
    s3 = s3_clients(creds, signature_version="s3v4")
    bucket, key = creds["bucket"], f"{creds['key']}/big.bin"
    parts_data = [b"a" * (5 * 1024 * 1024), b"tail"]
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts: list[CompletedPartTypeDef] = []
    for number, chunk in enumerate(parts_data, start=1):
        etag = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=io.BytesIO(chunk)
        )["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    whole = b"".join(parts_data)
    assert cloud.objects(key)[key] == (len(whole), hashlib.sha256(whole).hexdigest())

    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key})
    assert httpx.get(url).content == whole
    put_url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": f"{creds['key']}/streamed.bin"}
    )
    chunks = [b"x" * 1000] * 3
    # S3 refuses plain chunked uploads; aws-chunked ones carry the decoded length.
    assert httpx.put(put_url, content=iter(chunks)).status_code == 411
    streamed = httpx.put(
        put_url, content=iter(chunks), headers={"x-amz-decoded-content-length": "3000"}
    )
    assert streamed.status_code == 200
    assert cloud.objects(f"{creds['key']}/streamed.bin")[f"{creds['key']}/streamed.bin"][0] == 3000


def test_bulk_register_accepts_existing_keys_only(
    cloud: FakePix4DCloud, api: httpx.Client, s3_clients: Callable[..., S3Client]
) -> None:
    project_id, creds = new_project(api)
    keys = upload(s3_clients(creds), creds, ["a.jpg", "b.jpg"])
    url = f"{PROJECTS}{project_id}/inputs/bulk_register/"

    missing = f"{creds['key']}/never-uploaded.jpg"
    refused = api.post(url, json={"input_file_keys": [*keys, missing]})
    assert refused.status_code == 400
    assert missing in refused.json()["detail"]
    foreign = api.post(url, json={"input_file_keys": ["user-1/project-9/a.jpg"]})
    assert foreign.status_code == 400
    assert cloud.project(project_id).registered == set()

    assert api.post(url, json={"input_file_keys": keys}).json() == {"nb_images_registered": 2}
    assert api.post(url, json={"input_file_keys": keys[:1]}).json() == {"nb_images_registered": 1}
    assert cloud.projects()[project_id].registered == set(keys)


def test_bulk_register_counts_a_key_registered_before_either_way(
    cloud: FakePix4DCloud, api: httpx.Client, s3_clients: Callable[..., S3Client]
) -> None:
    project_id, creds = new_project(api)
    keys = upload(s3_clients(creds), creds, ["a.jpg", "b.jpg", "c.jpg"])
    url = f"{PROJECTS}{project_id}/inputs/bulk_register/"
    assert api.post(url, json={"input_file_keys": keys[:2]}).json()["nb_images_registered"] == 2
    cloud.register_counts = "new"
    assert api.post(url, json={"input_file_keys": keys}).json()["nb_images_registered"] == 1
    assert api.post(url, json={"input_file_keys": keys}).json()["nb_images_registered"] == 0
    cloud.register_counts = "sent"
    assert api.post(url, json={"input_file_keys": keys}).json()["nb_images_registered"] == 3
    assert cloud.project(project_id).registered == set(keys)


def test_the_project_list_is_paged_or_plain(cloud: FakePix4DCloud, api: httpx.Client) -> None:
    names = [f"flight {n}" for n in range(5)]
    for name in names:
        new_project(api, name)
    cloud.page_size = 2
    seen: list[str] = []
    url: str | None = PROJECTS
    while url is not None:
        page = api.get(url).json()
        assert page["count"] == 5
        seen += [p["name"] for p in page["results"]]
        assert all(p["public_status"] == "NEW" and p["create_date"] for p in page["results"])
        url = page["next"]
    assert seen == names
    assert api.get(f"{PROJECTS}?page=9").status_code == 404
    cloud.project_list = "plain"
    assert [p["name"] for p in api.get(PROJECTS).json()] == names
    assert cloud.requests["list"] == 5
    assert cloud.requests["projects"] == 5  # the creations only


def test_a_creation_whose_reply_is_lost_still_makes_the_project(
    cloud: FakePix4DCloud, api: httpx.Client
) -> None:
    cloud.api_faults.add("reset_after", "projects")
    assert api.get(PROJECTS).json()["count"] == 0  # the listing is not the creation
    with pytest.raises(httpx.RemoteProtocolError):
        api.post(PROJECTS, json={"name": "quarry 3"})
    assert [p.name for p in cloud.projects().values()] == ["quarry 3"]


def test_start_processing_runs_to_done_with_outputs(
    cloud: FakePix4DCloud, api: httpx.Client, s3_clients: Callable[..., S3Client]
) -> None:
    project_id, creds = new_project(api)
    keys = upload(s3_clients(creds), creds, [f"IMG_{n}.JPG" for n in range(6)])
    register = f"{PROJECTS}{project_id}/inputs/bulk_register/"
    start = f"{PROJECTS}{project_id}/start_processing/"

    api.post(register, json={"input_file_keys": keys[:5]}).raise_for_status()
    too_few = api.post(start)
    assert too_few.status_code == 400
    assert "6 images" in too_few.json()["detail"]
    api.post(register, json={"input_file_keys": keys}).raise_for_status()
    started = api.post(start)
    assert started.status_code == 200
    assert started.json()["estimated_time"] >= 0

    seen: set[str] = set()

    def done() -> bool:
        status = api.get(f"{PROJECTS}{project_id}/").json()["public_status"]
        seen.add(status)
        return bool(status == "DONE")

    wait_until(done, what="DONE")
    assert seen <= {"WAITING", "PROCESSING", "DONE"}
    assert api.post(start).status_code == 400
    assert cloud.project(project_id).start_calls == 3

    outputs = api.get(f"{PROJECTS}{project_id}/outputs/").json()["outputs"]
    ready = [o for o in outputs if o["availability"] == "done"]
    assert {o["result_type"] for o in ready} >= {"ortho", "quality_report"}
    stored = cloud.objects(creds["key"])
    for output in ready:
        assert output["s3_bucket"] == cloud.bucket
        assert stored[output["s3_key"]][0] > 0


def test_failed_processing_ends_in_error(
    cloud: FakePix4DCloud, api: httpx.Client, s3_clients: Callable[..., S3Client]
) -> None:
    project_id, creds = new_project(api)
    keys = upload(s3_clients(creds), creds, [f"IMG_{n}.JPG" for n in range(6)])
    api.post(f"{PROJECTS}{project_id}/inputs/bulk_register/", json={"input_file_keys": keys})
    cloud.fail_processing = True
    api.post(f"{PROJECTS}{project_id}/start_processing/").raise_for_status()
    project = wait_until(
        lambda: (p := api.get(f"{PROJECTS}{project_id}/").json())["public_status"] == "ERROR" and p,
        what="ERROR",
    )
    assert project["error_reason"]


def test_expired_token_is_refused_and_a_new_one_works(
    cloud: FakePix4DCloud, api: httpx.Client
) -> None:
    assert api.get(PROJECTS).status_code == 200
    cloud.expire_tokens()
    expired = api.get(PROJECTS)
    assert expired.status_code == 401
    assert "detail" in expired.json()
    fresh = httpx.get(
        f"{cloud.url}{PROJECTS}", headers={"Authorization": f"Bearer {get_token(cloud)}"}
    )
    assert fresh.status_code == 200


def test_expired_s3_credentials_give_expired_token(
    cloud: FakePix4DCloud, api: httpx.Client, s3_clients: Callable[..., S3Client]
) -> None:
    project_id, creds = new_project(api)
    s3 = s3_clients(creds)
    upload(s3, creds, ["one.jpg"])
    cloud.expire_s3_credentials()
    with pytest.raises(ClientError) as expired:
        upload(s3, creds, ["two.jpg"])
    assert expired.value.response["Error"]["Code"] == "ExpiredToken"
    fresh = api.get(f"{PROJECTS}{project_id}/s3_credentials/").json()
    upload(s3_clients(fresh), fresh, ["two.jpg"])


def test_injected_s3_faults_reach_boto3(
    cloud: FakePix4DCloud, api: httpx.Client, s3_clients: Callable[..., S3Client]
) -> None:
    _, creds = new_project(api)
    s3 = s3_clients(creds, retries={"total_max_attempts": 1})
    cloud.s3_faults.add("status503", times=1)
    with pytest.raises(ClientError) as slow_down:
        upload(s3, creds, ["a.jpg"])
    assert slow_down.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert slow_down.value.response["Error"]["Code"] == "SlowDown"
    upload(s3, creds, ["a.jpg"])

    # The reply is lost but the object was stored: the ambiguous case.
    cloud.s3_faults.add("drop_response", route="put_object")
    with pytest.raises(ConnectionClosedError):
        upload(s3, creds, ["b.jpg"])
    assert f"{creds['key']}/b.jpg" in cloud.objects(creds["key"])

    cloud.s3_faults.add("reset_mid_body")
    with pytest.raises(ConnectionClosedError):
        upload(s3, creds, ["c.jpg"])
    assert f"{creds['key']}/c.jpg" not in cloud.objects(creds["key"])
    assert cloud.s3_faults.injected == {"status503": 1, "drop_response": 1, "reset_mid_body": 1}


def test_sha256_checksums_are_checked_as_s3_checks_them(
    cloud: FakePix4DCloud, api: httpx.Client, s3_clients: Callable[..., S3Client]
) -> None:
    _, creds = new_project(api)
    s3 = s3_clients(creds, retries={"total_max_attempts": 1})
    bucket, prefix = creds["bucket"], creds["key"]
    data = b"image bytes " * 50_000
    checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
    other = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()

    def put(name: str, body: bytes, sha: str) -> dict[str, Any]:
        reply = s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=body, ChecksumSHA256=sha)
        return dict(reply)

    with pytest.raises(ClientError) as wrong:
        put("wrong.jpg", data, other)
    assert wrong.value.response["Error"]["Code"] == "BadDigest"
    assert wrong.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(ClientError) as malformed:
        put("malformed.jpg", data, "not base64 of 32 bytes")
    assert malformed.value.response["Error"]["Code"] == "InvalidRequest"
    assert put("right.jpg", data, checksum)["ChecksumSHA256"] == checksum  # named, as S3 does
    assert set(cloud.objects(prefix)) == {f"{prefix}/right.jpg"}

    # One byte flipped on the way: refused when a checksum came with the body...
    cloud.s3_faults.add("corrupt_body", "put_object")
    with pytest.raises(ClientError) as corrupted:
        put("corrupted.jpg", data, checksum)
    assert corrupted.value.response["Error"]["Code"] == "BadDigest"
    # ...stored altered when none did (what S3 would do too). botocore adds a CRC32 of its
    # own unless told not to; the proxy checks SHA-256 only.
    cloud.s3_faults.add("corrupt_body", "put_object")
    plain = s3_clients(creds, request_checksum_calculation="when_required")
    plain.put_object(Bucket=bucket, Key=f"{prefix}/unchecked.jpg", Body=data)
    stored = cloud.objects(prefix)
    assert f"{prefix}/corrupted.jpg" not in stored
    size, sha = stored[f"{prefix}/unchecked.jpg"]
    assert (size, sha != hashlib.sha256(data).hexdigest()) == (len(data), True)

    # Parts are checked the same way; the upload stays open for the part to be sent again.
    key = f"{prefix}/parts.bin"
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256")[
        "UploadId"
    ]
    cloud.s3_faults.add("corrupt_body", "upload_part")
    part = {"Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": 1}
    with pytest.raises(ClientError) as bad_part:
        s3.upload_part(**part, Body=data, ChecksumSHA256=checksum)
    assert bad_part.value.response["Error"]["Code"] == "BadDigest"
    good = s3.upload_part(**part, Body=data, ChecksumSHA256=checksum)
    assert good["ChecksumSHA256"] == checksum
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": good["ETag"], "ChecksumSHA256": checksum}]
        },
    )
    assert cloud.objects(key)[key] == (len(data), hashlib.sha256(data).hexdigest())
    assert cloud.s3_faults.injected == {"corrupt_body": 3}


def test_injected_api_faults(
    cloud: FakePix4DCloud, api: httpx.Client, s3_clients: Callable[..., S3Client]
) -> None:
    project_id, creds = new_project(api)
    keys = upload(s3_clients(creds), creds, [f"IMG_{n}.JPG" for n in range(6)])
    register = f"{PROJECTS}{project_id}/inputs/bulk_register/"

    cloud.api_faults.add("status500", route="register")
    assert api.post(register, json={"input_file_keys": keys}).status_code == 500
    cloud.api_faults.add("status429", route="any", retry_after=2)
    throttled = api.get(f"{PROJECTS}{project_id}/")
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "2")
    cloud.api_faults.add("garbage", route="project")
    assert api.get(f"{PROJECTS}{project_id}/").headers["Content-Type"].startswith("text/html")
    cloud.api_faults.add("truncated_json", route="register")
    with pytest.raises(ValueError, match=r".+"):
        api.post(register, json={"input_file_keys": keys}).json()
    cloud.api_faults.add("reset", route="project")
    with pytest.raises(httpx.RemoteProtocolError):
        api.get(f"{PROJECTS}{project_id}/")

    cloud.api_faults.add("start_ambiguous")
    with pytest.raises(httpx.RemoteProtocolError):
        api.post(f"{PROJECTS}{project_id}/start_processing/")
    assert api.get(f"{PROJECTS}{project_id}/").json()["public_status"] != "NEW"
    assert cloud.project(project_id).start_calls == 1
    assert cloud.api_faults.injected["start_ambiguous"] == 1
    assert cloud.requests["register"] == 2
    assert not cloud.api_faults.pending


def test_stall_ends_when_the_server_stops() -> None:
    outcome: list[BaseException | int] = []
    with FakePix4DCloud(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as cloud:
        cloud.api_faults.add("stall", route="token", delay_s=60)

        def call() -> None:
            try:
                outcome.append(_token_status(cloud))
            except httpx.HTTPError as exc:
                outcome.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        wait_until(lambda: cloud.api_faults.injected["stall"], what="the stalled request")
    caller.join(timeout=10)  # the stall (60 s) ends with the server, not after
    assert not caller.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], httpx.TransportError)


def _token_status(cloud: FakePix4DCloud) -> int:
    return httpx.post(f"{cloud.url}/oauth2/token/", data={}, timeout=30).status_code


def test_random_faults_follow_the_seed_and_can_be_switched_off() -> None:
    def draws(seed: int) -> list[str | None]:
        plan = api_fault_plan()
        plan.random(rate=0.3, seed=seed)
        return [(f.kind if (f := plan.take("register")) else None) for _ in range(40)]

    first = draws(1)
    assert first == draws(1)
    assert 0 < sum(kind is not None for kind in first) < 40

    plan = s3_fault_plan()
    plan.random(rate=1.0, seed=2, kinds=("status503",))
    assert all(plan.take("put_object") is not None for _ in range(5))
    plan.random(rate=0.0)
    assert plan.take("put_object") is None
    assert plan.injected == {"status503": 5}
    with pytest.raises(ValueError, match="unknown fault kind"):
        plan.add("status418")
    with pytest.raises(ValueError, match="only applies"):
        api_fault_plan().add("start_ambiguous", route="register")
