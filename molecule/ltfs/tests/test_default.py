"""Check the LTFS volume that the ltfs role formatted and mounted on the simulated library."""

import os

MOUNT_POINT = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "mnt")


def test_volume_is_fuse_mount(host):
    mount = host.mount_point(MOUNT_POINT)
    assert mount.exists
    assert mount.filesystem.startswith("fuse")


def test_volume_serial_from_barcode():
    assert os.getxattr(MOUNT_POINT, "user.ltfs.volumeSerial").decode().strip() == "TAPE01"


def test_volume_name_set_by_format():
    assert os.getxattr(MOUNT_POINT, "user.ltfs.volumeName").decode().strip() == "orthanc-archive"


def test_volume_is_writable(host):
    probe = os.path.join(MOUNT_POINT, "molecule-probe")
    with open(probe, "wb") as handle:
        handle.write(b"written by the molecule verifier\n")
    assert host.file(probe).size == 33
    os.unlink(probe)
