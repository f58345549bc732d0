"""Write the memory table of docs/scale.md (between its plan-table markers): `tunelab plan` for 7B and 70B
shapes under every preset, full fine-tuning and LoRA, on one node of 8 GPUs of 80 GB."""
from pathlib import Path

START, END = "<!-- plan-table:start -->\n", "<!-- plan-table:end -->"
DOC = Path(__file__).resolve().parent.parent / "docs" / "scale.md"
SETTINGS = ["data.train=unused", "train.batch_size=4", "train.max_length=2048", "train.gradient_checkpointing=true"]
GPUS, GPU_MEMORY = 8, "80GB"


def table() -> str:
    from tunelab.config import load_config
    from tunelab.plan import GiB, SHAPES, count, parse_bytes, plan
    from tunelab.distributed import PRESETS

    lines = ["| model | method | preset | per GPU (GiB) | weights | grads | optimizer | gathered | activations "
             "| fits 8 x 80 GB | host per node (GiB) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for shape in SHAPES:
        for method in ("full", "lora"):
            counts = count(load_config(None, [*SETTINGS, f"method={method}"]), shape)
            for preset in PRESETS:
                p = plan(load_config(None, [*SETTINGS, f"method={method}", f"distributed={preset}"]), GPUS,
                         parse_bytes(GPU_MEMORY), shape=shape, counts=counts)
                g = {k: f"{v / GiB:.1f}" for k, v in p.per_device.items()}
                lines.append(f"| {shape} | {method} | {preset} | {p.total / GiB:.1f} | {g['weights']} | "
                             f"{g['gradients']} | {g['optimizer']} | {g['gathered layers']} | {g['activations']} | "
                             f"{'yes' if p.fits else 'no'} | {p.host_per_node / GiB:.0f} |")
    return "\n".join(lines) + "\n"


def block(text: str) -> str:
    return text.split(START, 1)[1].split(END, 1)[0]


if __name__ == "__main__":
    text = DOC.read_text(encoding="utf-8")
    DOC.write_text(text.replace(START + block(text) + END, START + table() + END), encoding="utf-8")
