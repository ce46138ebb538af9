"""`launch.py train`: a personal LoRA from a few photos.

    launch.py train --photos DIR|FILE... --name NAME [--steps K] [--rank R] [--lr X] [--resume] [--overwrite]

An existing LoRA of the same name is never replaced without --overwrite.

Data-parallel on several GPUs: `accelerate launch launch.py train ...` (every
process prepares the same crops; only the first one prints and writes files).
"""

from __future__ import annotations

import sys

from pipelines.processes import is_main_process


def register(sub) -> None:
    p = sub.add_parser("train", help="train a personal LoRA from a few photos of one person")
    p.add_argument("--photos", nargs="+", action="extend", required=True, metavar="DIR|FILE",
                   help="photos of the person, or folders of them (3-50 recommended)")
    p.add_argument("--name", required=True, help="LoRA name: writes <loras>/<name>.safetensors")
    p.add_argument("--steps", type=int, help="training steps (default: 200 per photo, at most 800)")
    p.add_argument("--rank", type=int, help="LoRA rank (default 4)")
    p.add_argument("--alpha", type=float, help="LoRA alpha (default 32)")
    p.add_argument("--lr", type=float, help="learning rate (default 1.5e-4, cosine schedule)")
    p.add_argument("--seed", type=int, help="seed (default 0); the same seed gives the same LoRA")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint of NAME")
    p.add_argument("--overwrite", action="store_true", help="replace an existing <loras>/<name>.safetensors")
    p.add_argument("--checkpoint-every", type=int, metavar="N", help="save a checkpoint every N steps")
    p.add_argument("--trigger", help="trigger word in the captions (default lkns)")
    p.add_argument("--class-word", help="class phrase in the captions, e.g. 'a woman'")
    p.add_argument("--flip", action="store_true", help="also train on mirrored crops")
    p.add_argument("--min-face", type=int, metavar="PX", help="leave out faces smaller than PX (default 64)")
    p.add_argument("--text-encoder", action="store_true", help="also train a LoRA on the text encoders")
    p.add_argument("--gradient-checkpointing", choices=["auto", "on", "off"],
                   help="on: least GPU memory, slower; auto (default): on only after running out of GPU memory")
    p.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], help="default: bf16/fp16 on a GPU")
    p.add_argument("--base-model", help="SDXL base to train on (default sdxl-base)")
    p.set_defaults(func=cmd_train)




def config_from_args(args) -> dict:
    data: dict = {"name": args.name, "resume": bool(args.resume), "overwrite": bool(args.overwrite)}
    for arg, field in (("steps", "steps"), ("rank", "rank"), ("alpha", "alpha"), ("lr", "lr"), ("seed", "seed"),
                       ("checkpoint_every", "checkpoint_every"), ("mixed_precision", "mixed_precision"),
                       ("base_model", "base_model")):
        v = getattr(args, arg, None)
        if v is not None:
            data[field] = v
    if args.text_encoder:
        data["text_encoder"] = True
    if args.gradient_checkpointing in ("on", "off"):
        data["gradient_checkpointing"] = args.gradient_checkpointing == "on"
    return data


def cmd_train(args, settings) -> int:
    from pipelines.lora.dataset import DatasetOptions
    from pipelines.lora.manager import normalize_name
    from pipelines.lora.train import TrainConfig, train_lora
    from pipelines.requests import validate_request
    from pipelines.stores import open_store

    normalize_name(args.name, "--name")
    config = validate_request(TrainConfig, config_from_args(args), "train")
    opts = {"profile": settings.profile, "flip": bool(args.flip)}
    if args.trigger is not None:
        opts["trigger"] = args.trigger
    if args.class_word is not None:
        opts["class_word"] = args.class_word
    if args.min_face is not None:
        opts["min_face_px"] = args.min_face
    options = DatasetOptions(**opts)
    main = is_main_process(cpu=settings.resolve_device() == "cpu")

    def report(info: dict) -> None:
        if not main:
            return
        phase = info.get("phase")
        if phase == "dataset":
            for ex in info["excluded"]:
                print(f"left out {ex['file']}: {ex['reason']}", file=sys.stderr)
            for w in info["warnings"]:
                print(f"warning: {w}", file=sys.stderr)
            print(f"training on {len(info['used'])} photo(s): {', '.join(info['used'])}", file=sys.stderr)
        elif phase in ("resume", "load"):
            print(info.get("message", ""), file=sys.stderr)

    tset, result = train_lora(settings, args.photos, config, options, store=open_store(settings), callback=report)
    if main:
        if result.preview is not None:
            print(f"preview of the training crops: {result.preview}", file=sys.stderr)
        last = f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""
        print(f"trained {result.name} in {result.seconds:.0f} s ({result.steps} steps{last}); "
              f"trigger word: {result.trigger}; use it with: generate --lora {result.name}", file=sys.stderr)
        print(result.path)
    return 0
