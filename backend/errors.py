"""Errors a user can act on. Each carries a protocol `code` (see docs/protocol.md)."""


class ScanTalkError(Exception):
    code = "internal"


class BadRequest(ScanTalkError):
    code = "bad_request"


class MeshError(ScanTalkError, ValueError):
    code = "bad_mesh"


class AudioError(ScanTalkError, ValueError):
    code = "bad_audio"


class CheckpointError(ScanTalkError, ValueError):
    code = "bad_checkpoint"


class NoCheckpoint(ScanTalkError):
    code = "no_checkpoint"


class DeviceError(ScanTalkError):
    code = "device"


class Cancelled(ScanTalkError):
    code = "cancelled"
