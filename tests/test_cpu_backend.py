"""The XLA flag the entry points set (lvef_jax/cpu_backend.py) and what it changes."""

import re

import jax
import jax.numpy as jnp
import pytest

from lvef_jax import cpu_backend


def test_configure_adds_the_flag_once_and_leaves_a_user_s_own_choice():
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert cpu_backend.configure(environ)
  assert environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {cpu_backend.FLAG}"
  assert not cpu_backend.configure(environ)  # already there: not added twice
  assert environ["XLA_FLAGS"].count(cpu_backend.YNN_FLAG) == 1
  empty = {}
  assert cpu_backend.configure(empty) and empty["XLA_FLAGS"] == cpu_backend.FLAG
  own = {"XLA_FLAGS": f"{cpu_backend.YNN_FLAG}=individual_dot"}
  assert not cpu_backend.configure(own)
  assert own["XLA_FLAGS"] == f"{cpu_backend.YNN_FLAG}=individual_dot"


def test_configure_refuses_once_jax_has_started_its_backends(monkeypatch):
  jax.devices()  # started, with the flag the test session set up (conftest)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  with pytest.raises(RuntimeError, match="before JAX starts its backends"):
    cpu_backend.configure()


def _library_ops(fn, *args) -> list[set]:
  """The HLO operations inside each YNNPACK fusion of ``fn``'s compiled program."""
  text = jax.jit(fn).lower(*args).compile().as_text()
  bodies = dict(re.findall(r"^(%[\w.\-]+) [^\n]*\{\n(.*?)\n\}", text, re.M | re.S))
  calls = re.findall(r"= \S+ fusion\([^\n]*kind=kCustom, calls=(%[\w.\-]+)[^\n]*ynn_fusion", text)
  return [set(re.findall(r"= \S+ ([\w\-]+)\(", bodies[c])) for c in calls]


def test_the_session_s_convolutions_run_outside_ynnpack_and_reductions_inside():
  """Under the flag (set for the test session as for launch.py), XLA's own convolution
  computes a convolution, and YNNPACK still computes matmuls and reductions."""
  assert jax.default_backend() == "cpu"

  def fn(x, k, w):
    y = jax.lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    mean = jnp.mean(y, axis=(0, 1, 2))
    return jnp.dot(jax.nn.relu(y - mean), w).sum()

  args = (jnp.ones((8, 14, 14, 16)), jnp.ones((3, 3, 16, 32)), jnp.ones((32, 8)))
  ops = _library_ops(jax.grad(fn, argnums=(0, 1, 2)), *args)
  assert ops, "no YNNPACK fusion at all"
  assert not any("convolution" in o for o in ops), ops
  assert any("dot" in o for o in ops) and any("reduce" in o for o in ops), ops
