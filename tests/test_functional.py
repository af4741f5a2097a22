import torch

from zoo.functional import from_flat, layout_of, load_flat, population_forward, stack_states, to_flat
from zoo.generators.architectures import build_model


def _models(family, n=3, **kw):
    torch.manual_seed(0)
    return [build_model(family, **kw).eval() for _ in range(n)]


def test_layout_follows_state_dict_order_and_skips_integer_buffers():
    m = build_model("cnn", in_channels=1, out_dim=10, width=4)
    layout = layout_of(m)
    float_keys = [k for k, v in m.state_dict().items() if v.is_floating_point()]
    assert layout.names == float_keys
    assert "1.num_batches_tracked" not in layout.names
    assert layout.size == sum(v.numel() for k, v in m.state_dict().items() if k in float_keys)
    assert layout.n_params == sum(p.numel() for p in m.parameters())
    assert layout["1.running_mean"].trainable is False and layout["1.weight"].layer_type == "BatchNorm1d"


def test_flat_round_trip_reproduces_outputs():
    for family, kw, x in [("mlp", dict(in_dim=40, out_dim=10, width=8), torch.randn(5, 40)),
                          ("cnn", dict(in_channels=1, out_dim=10, width=4), torch.randn(5, 1, 40))]:
        models = _models(family, **kw)
        for mm in models:  # make BN running stats non-trivial
            mm.train()(x)
            mm.eval()
        layout = layout_of(models[0])
        params, buffers = stack_states(models)
        flat = to_flat(params, buffers, layout)
        p2, b2 = from_flat(flat, layout)
        assert torch.equal(to_flat(p2, b2, layout), flat)
        fresh = build_model(family, **kw).eval()
        load_flat(fresh, flat[1], layout)
        assert torch.equal(fresh(x), models[1](x))
        out = population_forward(models[0], params, buffers, x)
        for i, mm in enumerate(models):
            torch.testing.assert_close(out[i], mm(x), rtol=1e-6, atol=1e-6)
