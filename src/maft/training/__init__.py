"""4. Finetuning: one role's model on its own data, and running the 2N jobs.

- ``sft``: one role's finetune with TRL's SFTTrainer (LoRA or full; loss on the final or every critic turn)
- ``scheduler``: the jobs one after another here, or in parallel on Ray
"""
