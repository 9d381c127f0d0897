"""Child workflows: a parent starts one child per image and waits for all of them."""

import os
import sys

import shardflow

app = shardflow.App("album")


@app.workflow(name="images.resize")
def resize(image: str) -> str:
    return image + "@small"


@app.workflow(name="images.album")
def album(images: list[str]) -> list[str]:
    children = [shardflow.start_child(resize, image) for image in images]
    return [child.result() for child in children]


if __name__ == "__main__":
    images = sys.argv[1:] or ["a.png", "b.png", "c.png"]
    with shardflow.connect(os.environ.get("SHARDFLOW_CONFIG", "cluster.yaml")) as cluster:
        handle = cluster.submit(album, images)  # explicit name=: fine from a script
        print(handle.result(timeout=120))
