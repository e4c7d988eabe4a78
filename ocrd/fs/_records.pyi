"""The compiled step of ocrd.fs.records (ocrd/fs/records.c)."""

from ocrd.fs.inventory import FileEntry

def records(
    dir_fd: int, prefix: bytes, names: list[str], record_type: type[FileEntry], /
) -> tuple[list[FileEntry], list[tuple[str, int]]]: ...
