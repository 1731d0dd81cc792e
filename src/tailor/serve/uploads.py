"""POST /v1/files bodies, streamed: the multipart body is parsed chunk by chunk on a worker
thread and the file part written straight to a temporary file, so a 500 MB upload costs the
event loop nothing but handing chunks over, holds at most one batch of chunks in memory, and
stops the moment it passes the size limit.

The Guard (serve/app.py) does not buffer this route's body; it counts bytes as they arrive and
raises BodyTooLarge past the limit.
"""

from __future__ import annotations

from python_multipart.multipart import MultipartParser, parse_options_header

from tailor.serve.errors import APIError

MAX_FIELD_BYTES = 64 * 1024  # `purpose` and friends are words, not documents
MAX_PARTS = 16
BATCH_BYTES = 1 << 20  # chunks handed to the parsing thread together (fewer thread hops)


class BodyTooLarge(Exception):
    """The request body passed its limit while streaming."""

    def __init__(self, limit: int):
        super().__init__(f"The request body is larger than {limit} bytes.")
        self.limit = limit


class FormStream:
    """Feed a multipart/form-data body in pieces; the part named `file` goes to `sink` (a binary
    file), every other part is a small text field. Raises APIError(400) for a malformed body."""

    def __init__(self, content_type: str, sink):
        kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise APIError(400, "Send the file as multipart/form-data with 'file' and 'purpose' fields.", param="file")
        self.sink = sink
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_bytes = 0
        self._parts = 0
        self._header, self._value = b"", b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._is_file = False
        self._buf = bytearray()
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_header_field": self._on_field, "on_header_value": self._on_value,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_done,
            "on_part_data": self._data, "on_part_end": self._end})

    def write(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except APIError:
            raise
        except Exception as exc:  # the parser's own words say where the body went wrong
            raise APIError(400, f"The multipart body could not be read: {exc}", param="file") from exc

    def finish(self) -> None:
        try:
            self.parser.finalize()
        except Exception as exc:
            raise APIError(400, f"The multipart body could not be read: {exc}", param="file") from exc
        if self.filename is None:
            raise APIError(400, "Missing required parameter: 'file' (send it as multipart/form-data).", param="file",
                           code="missing_required_parameter")

    # -- parser callbacks ---------------------------------------------------------------------

    def _begin(self):
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise APIError(400, f"The multipart body has more than {MAX_PARTS} parts.", param="file")
        self._headers, self._header, self._value = {}, b"", b""

    def _on_field(self, data, start, end):
        self._header += data[start:end]

    def _on_value(self, data, start, end):
        self._value += data[start:end]

    def _header_end(self):
        self._headers[self._header.lower()] = self._value
        self._header, self._value = b"", b""

    def _headers_done(self):
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = opts.get(b"name", b"").decode("utf-8", "replace")
        filename = opts.get(b"filename")
        self._is_file = self._name == "file" and filename is not None
        if self._name == "file" and filename is None:
            raise APIError(400, "The 'file' field must be a file (multipart with a filename).", param="file")
        if self._is_file:
            if self.filename is not None:
                raise APIError(400, "Send one file per request.", param="file")
            self.filename = filename.decode("utf-8", "replace") or "file"
        self._buf = bytearray()

    def _data(self, data, start, end):
        if self._is_file:
            self.sink.write(data[start:end])
            self.file_bytes += end - start
            return
        self._buf += data[start:end]
        if len(self._buf) > MAX_FIELD_BYTES:
            raise APIError(400, f"The form field '{self._name}' is longer than {MAX_FIELD_BYTES} bytes.",
                           param=self._name or None)

    def _end(self):
        if not self._is_file and self._name:
            self.fields[self._name] = self._buf.decode("utf-8", "replace")
        self._is_file = False


async def stream_into(request, form: FormStream, run) -> None:
    """Read the request body and feed it to `form`, a batch of chunks at a time, through `run`
    (a coroutine function that runs a callable off the event loop). BodyTooLarge propagates."""
    batch = bytearray()
    async for chunk in request.stream():
        batch += chunk
        if len(batch) >= BATCH_BYTES:
            await run(form.write, bytes(batch))
            batch = bytearray()
    if batch:
        await run(form.write, bytes(batch))
    await run(form.finish)
