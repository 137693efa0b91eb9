"""Few-shot prediction and in-context learning (§7.1, Figure 7.1).

- `prompts`: Figure 7.1's "I: x, O: y" prompts, the greedy answer, scoring (`minigen fewshot`);
- `icl`: a small GPT trained here until few-shot ability emerges (`minigen train-icl`);
- `icl_circuit`: how it answers, read from its attention and tested by ablations;
- `icl_plots`: its accuracy against shots, its emergence, its attention maps;
- `commands`: the `fewshot`, `train-icl` and `eval-icl` commands.
"""
