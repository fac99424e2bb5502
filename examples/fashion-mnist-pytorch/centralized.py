"""Centralized baseline: the same model and optimiser on the whole training set.

Usage: /usr/bin/python3 centralized.py [--model cnn|mlp] [--epochs 10] [--batch-size 32]
           [--optimizer sgd|adam] [--learning-rate LR] [--lr-decay D] [--momentum 0.9] [--seed 0]
           [--csv FILE]

Trains for --epochs passes over all 60,000 training examples (a federation of R rounds
with E local epochs sees the data R*E times) and prints the test accuracy after each
epoch. Epoch K trains at the learning rate of a federation's round K (lr_decay, as in
train.py). Same data files (FEDCLI_FASHION_MNIST), seed model (model.py) and training loop
(train.py) as the federated entry points; threads: FEDCLI_TORCH_THREADS (default 1).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import runtime  # noqa: E402  (thread limits before numpy and torch)
import data  # noqa: E402
import model as models  # noqa: E402
import train  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(models.MODELS), default="cnn")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, help="default: train.py's")
    parser.add_argument("--lr-decay", type=float, help="default: train.py's")
    parser.add_argument("--optimizer", choices=["sgd", "adam"], help="default: train.py's")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=runtime.SEED)
    parser.add_argument("--csv", help="write epoch,test_accuracy,test_loss,seconds here")
    args = parser.parse_args()

    torch = models.torch
    x_train, y_train = data.as_tensors(data.read_idx(data.FILES["x_train"]),
                                       data.read_idx(data.FILES["y_train"]))
    x_test, y_test = data.as_tensors(data.read_idx(data.FILES["x_test"]),
                                     data.read_idx(data.FILES["y_test"]))
    model = models.new_model(args.model, args.seed)
    given = {"batch_size": args.batch_size, "learning_rate": args.learning_rate,
             "lr_decay": args.lr_decay, "optimizer": args.optimizer, "momentum": args.momentum}
    given = {k: v for k, v in given.items() if v is not None}
    chosen = train.training_settings(given, args.model)
    print("centralized %s: %s" % (args.model, {k: chosen[k] for k in (
        "batch_size", "optimizer", "learning_rate", "lr_decay", "momentum")}), flush=True)
    rows = []
    started = time.time()
    optimizer = None
    for epoch in range(1, args.epochs + 1):
        seed = (args.seed * 1_000_003 + epoch * 1_009) % (2 ** 63)
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        # One optimiser for the whole run (momentum carries across epochs), as centralized
        # training normally does; the learning rate follows the rounds' schedule.
        chosen = train.training_settings(dict(given, session_round=epoch), args.model)
        if optimizer:
            for group in optimizer.param_groups:
                group["lr"] = chosen["round_learning_rate"]
        optimizer, _, _ = train.train_epochs(model, x_train, y_train, chosen, generator, 1,
                                             optimizer)
        test_loss, test_accuracy = models.evaluate(model, x_test, y_test)
        rows.append((epoch, test_accuracy, test_loss, time.time() - started))
        print("epoch %2d: test accuracy %.4f, test loss %.4f (%.0f s)" % rows[-1], flush=True)
    if args.csv:
        with open(args.csv, "w") as out:
            out.write("epoch,test_accuracy,test_loss,seconds\n")
            out.writelines("%d,%.4f,%.4f,%.1f\n" % row for row in rows)
    print("centralized %s, %d epochs: test accuracy %.4f" % (args.model, args.epochs, rows[-1][1]))


if __name__ == "__main__":
    main()
