
>
__saved_model_init_op%#
__saved_model_init_op

NoOp
ò
serving_defaultÞ
=
features1
serving_default_features:0ÿÿÿÿÿÿÿÿÿ
C
patches8
serving_default_patches:0ÿÿÿÿÿÿÿÿÿ  <
division0
StatefulPartitionedCall:0ÿÿÿÿÿÿÿÿÿtensorflow/serving/predict