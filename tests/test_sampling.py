from zoo.generators.sampling import group_populations, plan_models
from zoo.spec import load_spec


def test_grid_ids_are_stable_and_unique():
    spec = load_spec("default")
    plans = plan_models(spec)
    assert len(plans) == 60 == len({p.model_id for p in plans})
    assert len({p.cell_id for p in plans}) == 20
    again = plan_models(load_spec("default"))
    assert [p.model_id for p in plans] == [p.model_id for p in again]
    # extending an axis keeps the existing models' ids (and so their random streams)
    wider = load_spec("default", ["phase.axes=[{key='arch.width', values=[8, 16, 32, 64, 128, 256, 512], "
                                  "name='capacity'}, {key='train.lr', values=[0.003, 0.01, 0.03, 0.06, 0.1, "
                                  "0.2], name='temperature'}]"])
    assert {p.model_id for p in plans} < {p.model_id for p in plan_models(wider)}


def test_populations_share_shapes_and_keep_cells_whole():
    plans = plan_models(load_spec("default"))
    for size in (64, 7, 3, 1):
        pops = group_populations(plans, size)
        assert sorted(m.model_id for p in pops for m in p.members) == sorted(p.model_id for p in plans)
        for pop in pops:
            assert len(pop.members) <= size
            assert len({m.config["arch.width"] for m in pop.members}) == 1
        if size >= 3:  # a cell (3 seeds) fits: never split across populations
            cell_pops = {}
            for pop in pops:
                for m in pop.members:
                    cell_pops.setdefault(m.cell_id, set()).add(pop.population_id)
            assert all(len(v) == 1 for v in cell_pops.values())
    assert len(group_populations(plans, 64)) == 5  # one per width


def test_cnn_phases_preset_is_the_measured_grid():
    """docs/results/phases_beyond_mlp.md measured this grid as cnn-smoke grown with --set; the preset
    must plan exactly those models, or the doc's five phases describe something else."""
    measured = load_spec("cnn-smoke", [
        "task.n_train=4000", "task.n_test=1000", "train.steps=1000", "train.batch_size=64", "train.checkpoints=2",
        "phase.axes=[{name='capacity',key='arch.width',values=[4,16,64]},"
        "{name='temperature',key='train.lr',values=[0.003,0.03,0.3]}]"])
    preset = load_spec("cnn-phases")
    assert [(p.model_id, p.config) for p in plan_models(preset)] == \
        [(p.model_id, p.config) for p in plan_models(measured)]
    assert len(plan_models(preset)) == 18
