import pytest

from app.security import resolve_launch
from pipelines.errors import BadInput


def cfg(**kw):
    base = dict(listen=False, port=7860, auth=None, insecure_no_auth=False, share=False, environ={})
    base.update(kw)
    return resolve_launch(**base)


def test_default_binds_loopback_without_share():
    c = cfg()
    assert c.host == "127.0.0.1" and not c.share and c.auth is None


def test_gradio_server_name_env_is_ignored_with_a_warning():
    c = cfg(environ={"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SHARE": "True"})
    assert c.host == "127.0.0.1" and not c.share
    assert any("GRADIO_SERVER_NAME" in w for w in c.warnings)


def test_listen_without_auth_is_refused():
    with pytest.raises(BadInput, match="--auth"):
        cfg(listen=True)


def test_listen_with_auth_or_explicit_insecure_flag():
    assert cfg(listen=True, auth="u:p").host == "0.0.0.0"
    assert cfg(listen=True, auth="u:p").auth == ("u", "p")
    assert cfg(listen=True, insecure_no_auth=True).host == "0.0.0.0"


@pytest.mark.parametrize("bad", ["nopass", ":p", "u:"])
def test_bad_auth_format(bad):
    with pytest.raises(BadInput, match="USER:PASS"):
        cfg(auth=bad)


def test_share_needs_auth():
    with pytest.raises(BadInput):
        cfg(share=True)
