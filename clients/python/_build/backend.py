"""A PEP 517 build backend for this pure-Python package, standard library
only, so that installing needs nothing from a package index."""

import base64
import hashlib
import io
import os
import tarfile
import zipfile

NAME = "hmac_agent"
DIST = "hmac_agent"
VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METADATA = """Metadata-Version: 2.1
Name: hmac-agent
Version: {version}
Summary: HMAC with keys held by hmac-agent, with pyca/cryptography's HMAC API
Requires-Python: >=3.9
License: Apache-2.0
""".format(version=VERSION)

WHEEL = """Wheel-Version: 1.0
Generator: hmac-agent-backend
Root-Is-Purelib: true
Tag: py3-none-any
"""


def _package_files():
    pkg = os.path.join(ROOT, NAME)
    for name in sorted(os.listdir(pkg)):
        if name.endswith(".py"):
            yield os.path.join(pkg, name), NAME + "/" + name


def _record_line(arcname, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return "%s,sha256=%s,%d" % (arcname, digest, len(data))


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    wheel_name = "%s-%s-py3-none-any.whl" % (DIST, VERSION)
    info = "%s-%s.dist-info" % (DIST, VERSION)
    records = []
    with zipfile.ZipFile(os.path.join(wheel_directory, wheel_name), "w", zipfile.ZIP_DEFLATED) as whl:
        for path, arcname in _package_files():
            with open(path, "rb") as f:
                data = f.read()
            whl.writestr(arcname, data)
            records.append(_record_line(arcname, data))
        for fname, text in (("METADATA", METADATA), ("WHEEL", WHEEL)):
            arcname = info + "/" + fname
            whl.writestr(arcname, text)
            records.append(_record_line(arcname, text.encode()))
        records.append(info + "/RECORD,,")
        whl.writestr(info + "/RECORD", "\n".join(records) + "\n")
    return wheel_name


def build_sdist(sdist_directory, config_settings=None):
    base = "%s-%s" % (DIST, VERSION)
    name = base + ".tar.gz"
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz") as tar:
        for rel in ["pyproject.toml", "README.md", "_build/backend.py"] + [a for _, a in _package_files()]:
            path = os.path.join(ROOT, rel)
            if os.path.exists(path):
                tar.add(path, arcname=base + "/" + rel)
        pkg_info = METADATA.encode()
        ti = tarfile.TarInfo(base + "/PKG-INFO")
        ti.size = len(pkg_info)
        tar.addfile(ti, io.BytesIO(pkg_info))
    return name
