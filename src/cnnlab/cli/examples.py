"""The examples at the end of each command's `--help` (and of the docs site's CLI reference).

Keyed by the command's words after `cnnlab`; each example is a command line and what it does.
A new command adds its entry here (tests/test_cli_help.py fails on a command without one).
"""

from __future__ import annotations

EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "": [
        ("cnnlab demo", "LeNet-5 on 5,000 real MNIST digits: train, evaluate, report"),
        ("cnnlab train --data photos/ --model resnet18 --epochs 20", "your own images"),
        ("cnnlab train --help", "every option of a command, with examples"),
        ("cnnlab completion bash >> ~/.bashrc", "TAB completion of commands and options"),
    ],
    "demo": [
        ("cnnlab demo", "40 epochs, about a minute on a laptop"),
        ("cnnlab demo --epochs 5 --out /tmp/runs", "a quicker look"),
    ],
    "train": [
        (
            "cnnlab train --data builtin:mnist-sample --model lenet5 --epochs 15",
            "the lecture's run",
        ),
        ("cnnlab train --data photos/ --model resnet18 --weights imagenet --image-size 128", ""),
        ("cnnlab train --data labels.csv --config my.toml --lr auto", "file < command line"),
        ("cnnlab train --resume auto --out runs --name my-run", "continue an interrupted run"),
        ("cnnlab train --data photos/ --class-weights auto --sampler balanced", "rare classes"),
        ("cnnlab train --data photos/ --recipe strong --augment flip --ema 0.999", "strong recipe"),
        ("cnnlab train --data photos/ --devices 2", "data-parallel on 2 processes (torchrun)"),
    ],
    "finetune": [
        ("cnnlab finetune --from runs/mnist --data letters/ --strategy linear-probe", ""),
        ("cnnlab finetune --from imagenet --model resnet18 --data photos/ --strategy gradual", ""),
    ],
    "transfer-study": [
        ("cnnlab transfer-study runs/mnist --data letters/ --shots 5,10,50,all", ""),
    ],
    "lr-find": [
        ("cnnlab lr-find --data photos/ --model resnet18", "prints the suggested learning rate"),
    ],
    "embed": [
        ("cnnlab embed runs/mnist --split test", "features and labels to .npz"),
    ],
    "evaluate": [
        ("cnnlab evaluate runs/mnist", "the run's held-out test split, with 95% intervals"),
        ("cnnlab evaluate runs/mnist --data other/ --json", "another dataset, as JSON"),
        ("cnnlab evaluate runs/xray --positive sick --target recall=0.95", "an operating point"),
        ("cnnlab evaluate runs/photos --tta flip", "with and without test-time augmentation"),
    ],
    "predict": [
        ("cnnlab predict runs/mnist digit.png photos/", "top-3 classes per image"),
        ("cnnlab predict runs/mnist/export/model.onnx digit.png --format csv", "an ONNX file"),
        ("cnnlab predict runs/seg photos/ --out masks/", "a segmentation run: mask PNGs"),
        ("cnnlab predict runs/photos photos/ --tta flip,crop", "mean of 12 views per image"),
    ],
    "segment": [
        ("cnnlab segment train --epochs 5", "U-Net on builtin:shapes"),
        ("cnnlab segment evaluate runs/unet-shapes", ""),
    ],
    "segment train": [
        ("cnnlab segment train --data shapes/ --model unet --encoder resnet18", ""),
        ("cnnlab segment train --data VOCdevkit/VOC2012 --loss ce+dice --image-size 256", ""),
    ],
    "segment evaluate": [
        ("cnnlab segment evaluate runs/unet-shapes --json", ""),
        ("cnnlab segment evaluate runs/unet-shapes --tta flip", "mIoU without and with TTA"),
    ],
    "segment predict": [
        ("cnnlab segment predict runs/unet-shapes photos/ --out masks/", ""),
        (
            "cnnlab segment predict runs/unet-shapes photos/ --out masks/ --tta flip",
            "image + mirror",
        ),
    ],
    "explain": [
        ("cnnlab explain runs/mnist digit.png", "the layer trace and Grad-CAM as explain.html"),
        ("cnnlab explain runs/cats cat.jpg --method gradcam --method scorecam --top-k 2", ""),
    ],
    "detect": [
        ("cnnlab detect train --epochs 5", "Faster R-CNN on builtin:shapes"),
        ("cnnlab detect evaluate runs/fasterrcnn-shapes", ""),
    ],
    "detect train": [
        ("cnnlab detect train --data coco/instances.json --data-root coco/images", ""),
        ("cnnlab detect train --data yolo/ --model retinanet --backbone resnet34", ""),
        (
            "cnnlab detect train --data yolo/ --backbone timm:efficientnet_b0 --init-from imagenet",
            "any of timm's convolutional models as the backbone, with timm's weights",
        ),
    ],
    "detect evaluate": [
        ("cnnlab detect evaluate runs/fasterrcnn-shapes --json", ""),
        ("cnnlab detect evaluate runs/fasterrcnn-shapes --tta flip", "mAP without and with TTA"),
    ],
    "detect predict": [
        ("cnnlab detect predict runs/fasterrcnn-shapes photos/ --out boxes/", ""),
        ("cnnlab detect predict runs/fasterrcnn-shapes photos/ --out boxes/ --tta flip", ""),
    ],
    "export": [
        ("cnnlab export runs/mnist", "ONNX, checked against PyTorch"),
        ("cnnlab export runs/mnist --format safetensors --out mnist.safetensors", ""),
    ],
    "serve": [
        ("cnnlab serve runs/mnist", "open http://127.0.0.1:8000"),
        ("cnnlab serve runs/mnist --port 9000 --max-upload-mb 5", ""),
        ("cnnlab serve runs/photos --tta flip", "test-time augmentation: image and mirror"),
        ("cnnlab serve runs/seg --tta flip", "segmentation: mask of image + mirror averaged"),
        ("cnnlab serve runs/defects --ignore-operating-point", "classes only, no decision"),
    ],
    "models": [
        ("cnnlab models", "the zoo with parameters and FLOPs"),
        ("cnnlab models show resnet18 --image-size 64", "one model's layers"),
        ("cnnlab models show mobilenet_v2 --image-size 32", "a modern backbone's blocks explained"),
        ("cnnlab models --task segment", "the segmentation architectures"),
    ],
    "metrics": [
        ("cnnlab metrics scores.csv --json", ""),
        ("cnnlab metrics multilabel.csv --threshold 0.4", "labels column with ';' between labels"),
    ],
    "compare": [("cnnlab compare runs/a runs/b", "McNemar's exact test on the same test set")],
    "conv": [
        ('cnnlab conv --x "1 2 3 4 5" --w "3 2 1" --mode full --explain', "step by step"),
        ("cnnlab conv --example slide", "a worked example of the lecture"),
        (
            'cnnlab conv --x photo.jpg --w "1 0 -1; 2 0 -2; 1 0 -1" --image-size 64',
            "an edge filter",
        ),
    ],
    "video": [
        ("cnnlab video train --epochs 5", "a small 3D CNN on builtin:moving-shapes"),
        ("cnnlab video predict runs/cars street.mp4 --out timeline/", ""),
    ],
    "video train": [
        ("cnnlab video train --data clips/ --model r2plus1d_18 --weights kinetics --frames 16", ""),
        ("cnnlab video train --augment crop,erasing --erasing-prob 0.5", "half the clips erased"),
    ],
    "video evaluate": [("cnnlab video evaluate runs/r3d_small-moving-shapes", "")],
    "video predict": [("cnnlab video predict runs/cars street.mp4 --stride 2 --out timeline/", "")],
    "video track": [("cnnlab video track runs/people MOT17-02.mp4 --gt gt.txt", "MOTA, IDF1")],
    "bench": [
        ("cnnlab bench list", "the benchmarks of a source checkout"),
        ("cnnlab bench train --help", "the training benchmark's own options"),
    ],
    "data": [
        ("cnnlab data check photos/", "every file decoded once; problems listed"),
        ("cnnlab data check labels.csv --json --strict", "for scripts: non-zero on problems"),
    ],
    "cv": [
        ("cnnlab cv --folds 5 --data builtin:digits --epochs 3", "mean, std and 95% interval"),
        ("cnnlab cv --folds 10 --data photos/ --model resnet18 --name cv-photos", "rerun resumes"),
        ("cnnlab metrics runs/cv-photos/oof_predictions.csv", "score the out-of-fold predictions"),
    ],
    "tune": [
        (
            "cnnlab tune --data builtin:digits --trials 12 --space lr=log:1e-3:0.3 "
            "--space batch_size=32,64,128",
            "TPE with median pruning",
        ),
        ("cnnlab tune --space-file space.toml --study s1 --storage runs/s1.journal", "a worker"),
        ("cnnlab train --config runs/tune-s1/best_config.json", "rerun the best configuration"),
    ],
    "runs": [
        ("cnnlab runs", "every run under runs/, oldest first"),
        ("cnnlab runs --task detection --sort metric --reverse", "best detectors first"),
        ("cnnlab runs --json > runs.json", "for scripts"),
        ("cnnlab runs clean", "what --keep best would remove, and its size"),
        ("cnnlab runs clean --yes", "remove it"),
    ],
    "completion": [
        ("cnnlab completion bash >> ~/.bashrc", "bash (needs bash-completion)"),
        ("cnnlab completion zsh >> ~/.zshrc", "zsh"),
        ("cnnlab completion fish > ~/.config/fish/completions/cnnlab.fish", "fish"),
    ],
}


def epilog(words: str) -> str | None:
    """The `examples:` block of one command (``words``: "train", "segment train", ...)."""
    examples = EXAMPLES.get(words)
    if not examples:
        return None
    lines = ["examples:"]
    for command, what in examples:
        lines.append(f"  {command}  # {what}" if what else f"  {command}")
    return "\n".join(lines)
