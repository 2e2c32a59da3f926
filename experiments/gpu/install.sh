# Source this on the device machine, from the repository root, with .whl carried:
#   source experiments/gpu/install.sh && python experiments/benchmarks/scale.py ...
# Installs the carried wheels into /tmp/site (no network there) and puts them and this
# checkout on PYTHONPATH; the image's jax, flax, optax and chex are used as they are.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import jax, jaxrl, brax, gymnax, rlax; print('jax', jax.__version__, jax.devices())" || return 1
