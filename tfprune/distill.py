"""Knowledge distillation: fine-tune a pruned student against the unpruned teacher's logits.

After structured pruning, most recipes (Minitron, LLM-Pruner, Sanh et al.'s DistilBERT)
recover accuracy by training the smaller student to match the teacher's softened output
distribution as well as the labels (Hinton et al. 2015, "Distilling the Knowledge in a
Neural Network"):

    loss = alpha * task_loss(y, s) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))

where `s` and `t` are the student's and teacher's logits and `T` the temperature (the `T^2`
keeps the gradient scale of the soft term independent of `T`). `Distiller` is a
`keras.Model` that computes this in `compute_loss`, so an ordinary `compile` / `fit` trains
the student; the teacher is frozen. The math is `keras.ops`, so it runs on every backend.

```python
distiller = tfprune.Distiller(student=small, teacher=model, temperature=4.0, alpha=0.5)
distiller.compile(
    optimizer="adam",
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
distiller.fit(x, y, epochs=2)
small.save("student.keras")        # the student is an ordinary model
```
"""

from __future__ import annotations

import keras

__all__ = ["Distiller", "distillation_loss"]


def _check(temperature: float, alpha: float) -> None:
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(
            "Expected `temperature` to be a positive number (1.0 leaves the logits as they "
            f"are, larger values soften them). Received: temperature={temperature!r}"
        )
    if not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
        raise ValueError(
            "Expected `alpha` to be a float in [0, 1] (the weight of the task loss; the "
            f"distillation term gets 1 - alpha). Received: alpha={alpha!r}"
        )


def distillation_loss(student_logits, teacher_logits, temperature: float = 1.0):
    """`T^2 * KL(softmax(t / T) || softmax(s / T))` over the last axis, averaged over the rest.

    Args:
        student_logits: Student logits, shape `(..., classes)`.
        teacher_logits: Teacher logits, the same shape.
        temperature: Softmax temperature `T` > 0.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: For a temperature that is not positive, or logits of different shapes.
    """
    _check(temperature, 0.0)
    if tuple(student_logits.shape) != tuple(teacher_logits.shape):
        raise ValueError(
            "Student and teacher logits must have the same shape. Received: "
            f"student_logits.shape={tuple(student_logits.shape)}, "
            f"teacher_logits.shape={tuple(teacher_logits.shape)}"
        )
    ops = keras.ops
    s = ops.cast(student_logits, "float32") / temperature
    t = ops.cast(teacher_logits, "float32") / temperature
    log_p_t = ops.log_softmax(t, axis=-1)
    log_p_s = ops.log_softmax(s, axis=-1)
    kl = ops.sum(ops.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
    return ops.mean(kl) * (temperature**2)


@keras.saving.register_keras_serializable(package="tfprune")
class Distiller(keras.Model):
    """A model that trains `student` on the labels and on `teacher`'s softened logits.

    Calling the distiller calls the student. `compile(loss=...)` sets the task loss (on the
    student's logits and the labels); `compute_loss` adds the distillation term of
    `tfprune.distill.distillation_loss`. The teacher is frozen (`trainable = False`) and
    runs in inference mode. Both models must output logits.

    Args:
        student: The model to train (e.g. the output of `tfprune.shrink`).
        teacher: The model to imitate (e.g. the model before pruning).
        temperature: Softmax temperature `T` > 0 of the distillation term.
        alpha: Weight in [0, 1] of the task loss; the distillation term gets `1 - alpha`.
            With `alpha=1` the distiller is plain fine-tuning, with `alpha=0` pure
            distillation (labels are then unused, but `fit` still needs `y`).
        **kwargs: Passed to `keras.Model` (e.g. `name`).

    Raises:
        TypeError: If `student` or `teacher` is not a Keras model.
        ValueError: For a temperature that is not positive or an alpha outside [0, 1].
    """

    def __init__(
        self,
        student: keras.Model,
        teacher: keras.Model,
        temperature: float = 2.0,
        alpha: float = 0.5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for arg, value in (("student", student), ("teacher", teacher)):
            if not isinstance(value, keras.Model):
                raise TypeError(
                    f"Expected `{arg}` to be a Keras model. Received: {arg}={value!r} of type "
                    f"{type(value).__name__}"
                )
        _check(temperature, alpha)
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """`alpha * task loss + (1 - alpha) * distillation loss` of one batch."""
        if y_pred is None:
            y_pred = self(x, training=training)
        task = super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )
        if self.alpha == 1.0:
            return task
        teacher_pred = keras.ops.stop_gradient(self.teacher(x, training=False))
        soft = distillation_loss(y_pred, teacher_pred, self.temperature)
        return self.alpha * task + (1.0 - self.alpha) * soft

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "temperature": self.temperature,
            "alpha": self.alpha,
        }

    @classmethod
    def from_config(cls, config: dict) -> Distiller:
        config = dict(config)
        for key in ("student", "teacher"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
