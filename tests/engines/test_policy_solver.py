"""The `solvable` gate with a policy model as the judge: the majority of its samples must agree with the answer a
synthesized problem states (a tiny model that memorized a few answers plays the policy)."""

from mathfactory.tasks.core import synthesis
from mathfactory.tasks.core.records import Problem, SynthOutput
from mathfactory.tasks.gate import SYNTHESIZED, GatesConfig
from mathfactory.tasks.stage import Run, build
from mathfactory.tasks.storage import Lake
from mathfactory.tasks.synthesis import SynthesisConfig

RUN = "policy-solver"


def test_a_problem_is_kept_iff_the_policys_majority_agrees(tiny_model, tmp_path, one_torch_thread):
    stated = {"What is 7 minus 2?": "5", "What is 4 times 3?": "13"}  # the policy memorized 5 and 12
    outputs = [SynthOutput(f"out{i}", f"seed{i}", "grade_school", synthesis.write(q, ["Work it out."], a), 9, "stop")
               for i, (q, a) in enumerate(stated.items())]
    lake = Lake(str(tmp_path))
    lake.write_part(RUN, "synth_outputs", 0, SynthOutput, outputs)
    lake.commit(RUN, "synth_outputs", SynthOutput)
    cfg = GatesConfig(solvable="policy", solutions="synthesizer", solver_model=str(tiny_model.path), solver_k=3,
                      solver_max_new_tokens=48, decontaminate=[])
    build(SYNTHESIZED, SynthesisConfig(gates=cfg), Run(lake=str(tmp_path), run_id=RUN))
    [kept] = lake.read(RUN, "synth_problems", Problem)
    assert (kept.question, kept.answer) == ("What is 7 minus 2?", "5")
    [dropped] = lake.read_quarantine(RUN, "synth_problems")
    assert dropped.origin == "out1" and dropped.reason == "solvable: policy answered '12', not '13'"
