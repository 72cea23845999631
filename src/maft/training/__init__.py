"""4. Finetuning: one role's model on its own data, and running the 2N jobs.

- ``sft``: one role's finetune with TRL's SFTTrainer (LoRA or full; loss on the final or every critic turn)
- ``concurrent``: the iteration's LoRA adapters trained together on one base copy
- ``job``: one role's finetune as a job, what the scheduler hands to wherever it trains
- ``scheduler``: the jobs one after another here, together, or in parallel on Ray
- ``distributed``: one role in several processes (FSDP); ``fsdp``: what those processes adjust in the libraries
- ``memory``: the memory a job needs, estimated before any compute
"""
